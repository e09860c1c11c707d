"""Cosine similarity of the shipped text encoder's caption embeddings across motion phrases (run from the repo root)."""
import torch
from diffsparse.reference import load_video_pipeline, VIDEO_WEIGHTS
from diffsparse.reference.text import encode
pipe = load_video_pipeline(VIDEO_WEIGHTS)
ms = ["moving up", "moving down", "moving left", "moving right", "bouncing", "rotating", "growing"]
caps = [f"a red square {m} on a plain background" for m in ms]
e = encode(pipe.tokenizer, pipe.text_encoder, caps, 512)
ids = pipe.tokenizer(caps, padding="max_length", max_length=512, return_tensors="pt")
n = int(ids.attention_mask[0].sum()); print("tokens", n, pipe.tokenizer.convert_ids_to_tokens(ids.input_ids[0][:n]))
x = e[:, :n].flatten(1)
x = torch.nn.functional.normalize(x, dim=1)
torch.set_printoptions(precision=3, linewidth=200)
print(ms); print(x @ x.T)
# after the transformer's text embedder
t = pipe.transformer.condition_embedder.text_embedder(e)[:, :n].flatten(1)
t = torch.nn.functional.normalize(t, dim=1); print(t @ t.T)
# per-token difference up vs down
d = (e[0, :n] - e[1, :n]).norm(dim=-1) / e[0, :n].norm(dim=-1); print("rel diff per token up/down", d)
d = (e[2, :n] - e[3, :n]).norm(dim=-1) / e[2, :n].norm(dim=-1); print("rel diff per token left/right", d)
d = (e[0, :n] - e[4, :n]).norm(dim=-1) / e[0, :n].norm(dim=-1); print("rel diff per token up/bounce", d)

"""Plans: a method's video layout extended to one attention call's full sequence.

Internally every call is laid out as `[video tokens in the method's order ; text tokens]`, so
video blocks start at 0 whatever the model's order (FLUX puts text first). Text rows and columns
are dense (the "text sink"); a block holding both video and text tokens is therefore dense too.
Key-side text may be shorter than query-side text: padded text keys (HunyuanVideo's mask) are
left out of the key sequence instead of masked. A video order may be shared by all heads `(Nv,)`
or given per head `(H, Nv)` (PARO's per-head axis orders); per-head orders are applied by gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch

from .geometry import TokenSpans
from .kernels.index import BlockIndex, build_block_index, num_blocks


@dataclass(frozen=True)
class Plan:
    """Everything needed to execute one attention call sparsely.

    q_order / k_order: LongTensor model positions in internal order, `(S,)` shared by all heads or
        `(H, S)` per head (None = identity).
    q_inverse: LongTensor internal position of each model query position, same shape (None = identity).
    index: the block layout `(1, Hm, nq, nk)` with its CSR lists.
    """

    q_order: Optional[torch.Tensor]
    k_order: Optional[torch.Tensor]
    q_inverse: Optional[torch.Tensor]
    index: BlockIndex

    @property
    def kept_blocks(self) -> int:
        """Computed blocks per (batch, head) summed over heads of the layout (Hm)."""
        return int(self.index.counts.sum())

    @property
    def total_blocks(self) -> int:
        return int(self.index.mask.numel())

    def to(self, device: torch.device) -> "Plan":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Plan(mv(self.q_order), mv(self.k_order), mv(self.q_inverse), self.index.to(device))

    def gather(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """q/k/v `(B, S, H, D)` in model order -> `(B, H, S, D)` in internal order."""
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return take_tokens(qh, self.q_order), take_tokens(kh, self.k_order), take_tokens(vh, self.k_order)

    def scatter(self, out: torch.Tensor) -> torch.Tensor:
        """Output `(B, H, S, D)` in internal order -> `(B, S, H, D)` in model order."""
        return take_tokens(out, self.q_inverse).transpose(1, 2)


def take_tokens(x: torch.Tensor, order: Optional[torch.Tensor]) -> torch.Tensor:
    """Reorder the token axis of `(B, H, S, D)` by `order` `(S,)` (all heads) or `(H, S)` (per head)."""
    if order is None:
        return x
    if order.dim() == 1:
        return x.index_select(2, order)
    if order.shape[0] != x.shape[1]:
        raise ValueError(f"per-head token order for {order.shape[0]} heads applied to {x.shape[1]} heads")
    return torch.gather(x, 2, order[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1]))


def full_mask(video_mask: torch.Tensor, video_len: int, q_text: int, k_text: int, block_q: int, block_k: int) -> torch.Tensor:
    """Embed a video block mask `(Hm, nqv, nkv)` in the `[video ; text]` layout with dense text rows/columns."""
    hm, nqv, nkv = video_mask.shape
    nq, nk = num_blocks(video_len + q_text, block_q), num_blocks(video_len + k_text, block_k)
    mask = torch.zeros(hm, nq, nk, dtype=torch.bool)
    mask[:, :nqv, :nkv] = video_mask
    if q_text:
        mask[:, video_len // block_q :, :] = True
    if k_text:
        mask[:, :, video_len // block_k :] = True
    return mask


def build_plan(
    video_order: Optional[torch.Tensor],
    video_mask: torch.Tensor,
    spans: TokenSpans,
    key_text: Optional[torch.Tensor],
    block_q: int,
    block_k: int,
) -> Plan:
    """Assemble a plan on the CPU.

    Args:
        video_order: `(Nv,)` raster index per internal video position, `(H, Nv)` per head, or None
            (raster order).
        video_mask: `(Hm, ceil(Nv/bq), ceil(Nv/bk))` from the method.
        spans: where video and text sit in the model's sequence.
        key_text: indices (within the text span) of text tokens usable as keys, or None for all.
    """
    nv, nt = spans.video_len, spans.text_len
    kt = nt if key_text is None else int(key_text.numel())
    mask = full_mask(video_mask, nv, nt, kt, block_q, block_k)
    video_pos = spans.video_positions()
    if video_order is not None:
        video_pos = video_pos[video_order.long()]
    text_pos = spans.text_positions()
    key_text_pos = text_pos if key_text is None else text_pos[key_text.long()]
    lead = video_pos.shape[:-1]  # () or (H,)
    q_order = torch.cat([video_pos, text_pos.expand(*lead, -1)], -1)
    k_order = torch.cat([video_pos, key_text_pos.expand(*lead, -1)], -1)
    arange = torch.arange(q_order.shape[-1])
    identity_q = bool((q_order == arange).all())
    # Trimmed text keys are never the identity, even when they are a prefix.
    identity_k = kt == nt and bool((k_order == torch.arange(k_order.shape[-1])).all())
    if identity_q and video_order is not None and video_order.dim() == 2:
        q_order, k_order = q_order[0], k_order[0]  # every head in model order: drop the head axis
    q_inverse = None
    if not identity_q:
        q_inverse = torch.empty_like(q_order).scatter_(-1, q_order, arange.expand_as(q_order).contiguous())
    index = build_block_index(mask.unsqueeze(0), (block_q, block_k))
    return Plan(None if identity_q else q_order, None if identity_k else k_order, q_inverse, index)


@dataclass(frozen=True)
class PlanKey:
    """Everything a plan depends on, frozen: the layout's identity (a static method's key, a dynamic
    layout's key, or "base"), the call's token spans, the usable text keys, the block sizes and the device."""

    layout: Hashable
    spans: TokenSpans
    key_text: Optional[Tuple[int, ...]]
    block_q: int
    block_k: int
    device: str

    @staticmethod
    def of(layout: Hashable, spans: TokenSpans, key_text: Optional[torch.Tensor], block_q: int, block_k: int,
           device) -> "PlanKey":
        kt = None if key_text is None else tuple(key_text.tolist())
        return PlanKey(layout, spans, kt, block_q, block_k, str(device))


class PlanCache:
    """Plans built once per `PlanKey` and kept (by the handle or its dynamic engine)."""

    def __init__(self) -> None:
        self._plans: Dict[PlanKey, Plan] = {}

    def get(self, key: PlanKey, build: Callable[[], Plan]) -> Plan:
        if key not in self._plans:
            self._plans[key] = build().to(key.device)
        return self._plans[key]

    def __len__(self) -> int:
        return len(self._plans)

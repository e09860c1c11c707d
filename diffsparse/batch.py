"""Batch rendering across ranks: the prompts of a list split over the processes of a standard launcher
(`torchrun`, `accelerate launch`, any number of nodes), or over processes spawned on this machine.

Launcher detection. A rank reads the variables every launcher exports (torchrun and `accelerate launch` both
set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT): WORLD_SIZE > 1 means "I am one of
WORLD_SIZE ranks", and the process group is initialised from them (`env://`), NCCL on CUDA (one GPU per local
rank, `cuda:LOCAL_RANK`) else gloo (threads per rank: this machine's cores // LOCAL_WORLD_SIZE). The group is
destroyed at the end unless the caller had initialised it. This uses `torch.distributed` directly rather than
accelerate's `PartialState`: the state is a process-wide singleton that outlives the call, on CPU it picks MPI
over gloo when MPI is importable and rewrites thread counts and environment variables, and its
`split_between_processes` splits over all ranks while Ulysses needs the split over *groups* of ranks. Both
launchers' environments are the same `env://` variables, so nothing is lost.

`--num-processes N` (`render_batch(num_processes=N)`) on one machine is the same path: N fresh processes get the
variables a launcher would set (127.0.0.1, a free port) and call `run_rank`, exactly what a torchrun rank calls.

Layout. With Ulysses degree K the W ranks form G = W // K groups of K *consecutive* ranks (group g = ranks
gK .. gK+K-1; on several nodes K should divide the ranks per node so a group's all-to-alls stay inside a node):
one device mesh `("dp", "ring", "ulysses")` of shape (G, 1, K), the ("ring", "ulysses") slice handed to
Diffusers' `ContextParallelConfig(ulysses_degree=K, mesh=...)`. Group g renders prompts g, g + G, g + 2G, ...;
its K ranks render each of them together (same prompt, same seed, the sequence and heads split between them)
and the group's first rank writes the video and reports it. K = 1 is plain data parallelism.

Failures. Setup (loading the model, enabling Ulysses) is agreed between ranks: a rank that fails makes every
rank raise the same error, so no rank hangs in a collective. A prompt whose render or video write fails is
recorded `{"index", "prompt", "rank", "error"}` and the rank goes on with its next prompt. (Under Ulysses, a
failure on only some ranks of a group *inside* a collective leaves the others waiting until the process group
times out; an input that fails, fails on all K.) Videos are written under a temporary name and renamed when
complete.

Manifest. After every rank has finished (the gather is the barrier), rank 0 writes `manifest.json` (a stale one
is removed at the start, so an interrupted run never leaves one behind):

    {"complete": true,                 # every prompt's video was written
     "prompts": 3, "method": "radial", "world_size": 2, "ulysses": 1, "groups": 2,
     "videos": [{"index": 0, "prompt": "...", "file": "0000_....mp4", "rank": 0, "group": 0,
                 "dit_seconds": 1.2, "total_seconds": 1.9, "density": 0.31}, ...],   # written videos only
     "failed": [{"index": 1, "prompt": "...", "rank": 1, "error": "OSError: ..."}]}

Every prompt is in exactly one of "videos" and "failed", in prompt order; "videos" never lists a prompt whose
file was not written. Multi-node: the videos are written on the node of the rank that rendered them, so put
`--out` on a shared filesystem (or collect each node's folder; "rank" says where each file is).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")

MANIFEST = "manifest.json"


def output_name(index: int, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48] or "video"
    return f"{index:04d}_{slug}.mp4"


def first_line(err: BaseException) -> str:
    """`Type: first non-empty line of the message` (tools' messages run over many lines)."""
    line = next((part.strip() for part in str(err).splitlines() if part.strip()), "")
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


# ---- who am I: ranks, groups, shares ----

@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: `world` ranks in `world // ulysses` groups of `ulysses` consecutive ranks."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    ulysses: int = 1

    def __post_init__(self) -> None:
        check_ulysses(self.ulysses, self.world)
        if not 0 <= self.rank < self.world or not 0 <= self.local_rank < self.local_world:
            raise ValueError(f"inconsistent launcher variables: RANK={self.rank} WORLD_SIZE={self.world} "
                             f"LOCAL_RANK={self.local_rank} LOCAL_WORLD_SIZE={self.local_world}")

    @property
    def groups(self) -> int:
        return self.world // self.ulysses

    @property
    def group(self) -> int:
        return self.rank // self.ulysses

    @property
    def leader(self) -> bool:
        """The group's first rank: it writes and reports what the group renders."""
        return self.rank % self.ulysses == 0

    def share(self, items: Sequence[T]) -> List[Tuple[int, T]]:
        """(index, item) of this rank's group: items g, g + G, g + 2G, ... (every item goes to exactly one group)."""
        return [(i, items[i]) for i in range(self.group, len(items), self.groups)]


def check_ulysses(ulysses: Any, world: int) -> None:
    if isinstance(ulysses, bool) or not isinstance(ulysses, int) or ulysses < 1:
        raise ValueError(f"ulysses must be an int >= 1, got {ulysses!r}")
    if world % ulysses:
        raise ValueError(f"ulysses={ulysses} must divide the world size {world} (the ranks form world/ulysses "
                         f"groups of ulysses ranks)")


def launcher_world() -> int:
    """WORLD_SIZE as a launcher exported it (1 when not launched)."""
    return _env_int("WORLD_SIZE", 1)


def launched() -> bool:
    """True in a rank of a multi-process launch (torchrun, accelerate launch, `spawn`)."""
    return launcher_world() > 1


def ranks_from_env(ulysses: int = 1) -> Ranks:
    """This process's `Ranks` from the launcher's variables (rank 0 of 1 when not launched)."""
    world = launcher_world()
    return Ranks(rank=_env_int("RANK", 0), world=world, local_rank=_env_int("LOCAL_RANK", 0),
                 local_world=_env_int("LOCAL_WORLD_SIZE", world), ulysses=ulysses)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    if not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"launcher variable {name}={text!r} is not an int") from None


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---- the process group ----

def rank_device(ranks: Ranks, device: Optional[str] = None) -> str:
    """`cuda:LOCAL_RANK` when rendering on CUDA (`device` None and CUDA available, or a cuda device), else `device`
    or cpu. One GPU per local rank: a rank without one is refused."""
    import torch

    kind = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind != "cuda":
        return device or "cpu"
    if ranks.world == 1 and ranks.local_world == 1:
        return device or "cuda"
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise ValueError(f"local rank {ranks.local_rank} has no GPU of its own: this machine has {count} CUDA "
                         f"GPU(s) for {ranks.local_world} local ranks (one GPU per rank)")
    return f"cuda:{ranks.local_rank}"


@contextlib.contextmanager
def process_group(ranks: Ranks, device: str, threads: Optional[int] = None) -> Iterator[None]:
    """Initialise the default process group from the launcher's variables (`env://`) when `ranks.world > 1` and
    destroy it on exit (unless it was already initialised). On CPU, threads per rank: `threads`, else cores //
    local ranks when there are several."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    elif threads or ranks.local_world > 1:
        torch.set_num_threads(threads or max(1, cpu_cores() // ranks.local_world))
    if ranks.world == 1:
        yield
        return
    import torch.distributed as dist

    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", init_method="env://",
                                rank=ranks.rank, world_size=ranks.world)
    try:
        yield
    finally:
        if owner and dist.is_initialized():
            dist.destroy_process_group()


def all_gather(ranks: Ranks, obj: T) -> List[T]:
    """Every rank's `obj`, in rank order, on every rank (also a barrier)."""
    if ranks.world == 1:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def gather_to_root(ranks: Ranks, obj: T) -> Optional[List[T]]:
    """Every rank's `obj` in rank order on rank 0 (None elsewhere): for large objects (frames)."""
    if ranks.world == 1:
        return [obj]
    import torch.distributed as dist

    out: Optional[List[Any]] = [None] * ranks.world if ranks.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


def agree(ranks: Ranks, step: Callable[[], T], what: str, user: Tuple[type, ...] = ()) -> T:
    """Run `step` on every rank; when it fails on any rank, raise on every rank, so that no rank is left waiting
    in a collective. Bad input (ValueError, TypeError, FileNotFoundError, and `user`) is raised as ValueError
    `<what> failed [on rank r]: <Type>: <first line>`; anything else as RuntimeError with the same message
    (in a single process: the exception itself, traceback and all)."""
    bad_input = (ValueError, TypeError, FileNotFoundError, *user)
    result, error = None, None
    try:
        result = step()
    except Exception as err:  # reported to every rank below; a lone traceback would leave the others hanging
        if ranks.world == 1 and not isinstance(err, bad_input):
            raise
        error = (isinstance(err, bad_input), first_line(err))
    errors = all_gather(ranks, error)
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if failed:
        rank, (is_input, message) = failed[0]
        where = "" if ranks.world == 1 else f" on rank {rank}" + (
            f" and {len(failed) - 1} more" if len(failed) > 1 else "")
        raise (ValueError if is_input else RuntimeError)(f"{what} failed{where}: {message}")
    return result  # type: ignore[return-value]


# ---- the pipeline of one rank ----

def transformers(pipe: Any) -> List[Any]:
    return [t for t in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if t is not None]


def transformer_heads(model: Optional[str]) -> Optional[int]:
    """Attention heads of a local pipeline folder's transformer, or of the embedded default model, read from the
    config without loading weights (None when unknown)."""
    if model:
        path = os.path.join(model, "transformer", "config.json")
    else:
        from .reference import VIDEO_WEIGHTS, available

        if not available("video"):
            return 4  # `render.default_video_pipeline`'s random tiny Wan
        path = os.path.join(VIDEO_WEIGHTS, "transformer", "config.json")
    try:
        with open(path) as f:
            heads = json.load(f).get("num_attention_heads")
    except (OSError, ValueError, AttributeError):
        return None
    return heads if isinstance(heads, int) else None


@contextlib.contextmanager
def _an_accelerator_count() -> Iterator[None]:
    """Diffusers' `_resolve_parallel_config` computes `rank % torch.accelerator.device_count()` even when it is given
    a mesh: a division by zero on a machine without an accelerator. While enabling on such a machine, count one
    device; the value only names the device Diffusers records on the config (`_device`, never read)."""
    import torch

    if torch.accelerator.device_count() > 0:
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def enable_ulysses(pipe: Any, ranks: Ranks, device: str) -> None:
    """Ulysses context parallelism of degree `ranks.ulysses` on each transformer of `pipe`, within this rank's group:
    one (groups, 1, ulysses) mesh named ("dp", "ring", "ulysses"), whose ("ring", "ulysses") slice is the group."""
    if ranks.ulysses == 1:
        return
    import torch
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    from .parallel import context_parallel_plan

    for transformer in transformers(pipe):  # checked on every rank before any collective
        heads = getattr(transformer.config, "num_attention_heads", None)
        if isinstance(heads, int) and heads % ranks.ulysses:
            raise ValueError(f"ulysses={ranks.ulysses} must divide the transformer's {heads} attention heads "
                             "(Ulysses gives each rank of a group heads/ulysses of them)")
    mesh = init_device_mesh(torch.device(device).type, (ranks.groups, 1, ranks.ulysses),
                            mesh_dim_names=("dp", "ring", "ulysses"))
    with _an_accelerator_count():
        for transformer in transformers(pipe):
            transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=ranks.ulysses, mesh=mesh),
                                           cp_plan=context_parallel_plan(transformer))


def rank_pipeline(ranks: Ranks, model: Optional[str], device: str) -> Any:
    """The pipeline of this rank (the local folder `model`, or the embedded default), under Ulysses when
    `ranks.ulysses > 1`; agreed between ranks (see `agree`). Only rank 0 says which model it loaded and shows
    progress bars."""
    from . import render as R

    def load() -> Any:
        with contextlib.ExitStack() as quiet:
            if ranks.rank:  # the same note and loading bars as rank 0's; an error is reported through `agree`
                quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
                quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
            pipe = R.pipeline_for(model, device)
        if ranks.rank:
            pipe.set_progress_bar_config(disable=True)
        return pipe

    # a folder Diffusers cannot load (missing weights, foreign config) is bad input; the embedded model's are bugs
    pipe = agree(ranks, load, "loading the model", user=(OSError,) if model else ())
    agree(ranks, lambda: enable_ulysses(pipe, ranks, device), f"enabling Ulysses (ulysses={ranks.ulysses})")
    return pipe


# ---- batch rendering ----

def run_rank(
    prompts: List[str],
    out_dir: str,
    method: Optional[str],
    model: Optional[str] = None,
    method_options: Optional[Dict[str, Any]] = None,
    fps: int = 8,
    ulysses: int = 1,
    device: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """What one rank of a launch does (and the only process of an unlaunched run): render its group's share,
    gather, and (rank 0) write the manifest. Returns the manifest on every rank."""
    ranks = ranks_from_env(ulysses)
    dev = rank_device(ranks, device)
    with process_group(ranks, dev):
        if ranks.rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, MANIFEST))
        barrier(ranks)
        os.makedirs(out_dir, exist_ok=True)  # on other nodes
        pipe = rank_pipeline(ranks, model, dev)
        videos, failed = _render_share(ranks, pipe, prompts, out_dir, method, method_options or {}, fps,
                                       options or {})
        parts = all_gather(ranks, (videos, failed))  # every rank is done: the barrier before the manifest
        manifest = _manifest(prompts, method, ranks, parts)
        if ranks.rank == 0:
            path = os.path.join(out_dir, MANIFEST)
            with open(path + ".tmp", "w") as f:
                json.dump(manifest, f, indent=2)
            os.replace(path + ".tmp", path)
        barrier(ranks)  # no rank reports before the manifest is there
    return manifest


def _render_share(ranks: Ranks, pipe: Any, prompts: List[str], out_dir: str, method: Optional[str],
                  method_options: Dict[str, Any], fps: int, options: Dict[str, Any]) -> Tuple[List[dict], List[dict]]:
    from diffusers.utils import export_to_video

    from . import render as R

    videos, failed = [], []
    for index, prompt in ranks.share(prompts):
        try:
            result = R.render(pipe, method, prompt=prompt, **options, **method_options)
            if ranks.leader:
                name = output_name(index, prompt)
                partial = os.path.join(out_dir, f".partial.rank{ranks.rank}.{name}")
                export_to_video(list(result.frames), partial, fps=fps)
                os.replace(partial, os.path.join(out_dir, name))
                density = result.stats["density"] if result.stats else None
                videos.append({"index": index, "prompt": prompt, "file": name, "rank": ranks.rank,
                               "group": ranks.group, "dit_seconds": result.dit_seconds,
                               "total_seconds": result.total_seconds, "density": density})
        except Exception as err:  # one prompt's failure: recorded with its prompt, the rank goes on
            if ranks.leader:
                failed.append({"index": index, "prompt": prompt, "rank": ranks.rank, "error": first_line(err)})
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out_dir, f".partial.rank{ranks.rank}.{output_name(index, prompt)}"))
    return videos, failed


def _manifest(prompts: List[str], method: Optional[str], ranks: Ranks,
              parts: List[Tuple[List[dict], List[dict]]]) -> Dict[str, Any]:
    videos = sorted((row for part in parts for row in part[0]), key=lambda row: row["index"])
    failed = sorted((row for part in parts for row in part[1]), key=lambda row: row["index"])
    seen = [row["index"] for row in videos + failed]
    if len(seen) != len(set(seen)):  # a split bug, never an input: say it loudly
        raise RuntimeError(f"prompts reported more than once: {sorted(i for i in set(seen) if seen.count(i) > 1)}")
    for index in sorted(set(range(len(prompts))) - set(seen)):
        failed.append({"index": index, "prompt": prompts[index], "rank": None, "error": "no rank reported it"})
    failed.sort(key=lambda row: row["index"])
    return {"complete": not failed, "prompts": len(prompts), "method": method or "dense", "world_size": ranks.world,
            "ulysses": ranks.ulysses, "groups": ranks.groups, "videos": videos, "failed": failed}


def render_batch(
    prompts: List[str],
    out_dir: str,
    method: Optional[str],
    num_processes: int = 1,
    model: Optional[str] = None,
    method_options: Optional[Dict[str, Any]] = None,
    fps: int = 8,
    ulysses: int = 1,
    device: Optional[str] = None,
    **options: Any,
) -> Dict[str, Any]:
    """Render every prompt once, videos written at `fps` into `out_dir`; returns the manifest (also
    `manifest.json`, see the module docstring). Under a launcher (WORLD_SIZE > 1) this process is one rank;
    otherwise `num_processes` local processes are spawned as the ranks of the same path (1: this process)."""
    if not prompts:
        raise ValueError("no prompts to render")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    args = (list(prompts), out_dir, method, model, method_options or {}, fps, ulysses, device, options)
    if launched():
        if num_processes > 1:
            raise ValueError(f"num_processes={num_processes} spawns processes on this machine, but this process is "
                             f"already one of {launcher_world()} ranks of a launcher (torchrun / accelerate "
                             "launch): size the run with the launcher instead")
        return run_rank(*args)
    check_ulysses(ulysses, num_processes)
    groups = min(num_processes // ulysses, len(prompts))  # no idle groups
    if groups * ulysses == 1:
        return run_rank(*args)
    return spawn(groups * ulysses, run_rank, *args)


# ---- ranks on this machine ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(nprocs: int, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` in `nprocs` fresh processes on this machine as ranks 0..nprocs-1 of one launch (the variables
    torchrun would set: 127.0.0.1, a free port), returning rank 0's result. A ValueError a rank raises (bad input)
    is raised here; any other failure of a rank raises torch's ProcessRaisedException / ProcessExitedException.
    Either way a rank that fails stops the others."""
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_spawned, args=(nprocs, free_port(), queue, fn, args), nprocs=nprocs, join=False,
                                 start_method="spawn")
    replies: List[Tuple[str, Any]] = []
    try:
        while not context.join(timeout=0.2):
            while not queue.empty():  # read while the ranks run: a large result must not block rank 0 on a full pipe
                replies.append(queue.get())
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        while not queue.empty():
            replies.append(queue.get())
        bad_input = next((value for kind, value in replies if kind == "ValueError"), None)
        if bad_input is None:
            raise
        raise ValueError(bad_input) from None
    while not queue.empty():
        replies.append(queue.get())
    result = next((value for kind, value in replies if kind == "ok"), _MISSING)
    if result is _MISSING:
        raise RuntimeError("rank 0 exited without a result")
    return result


_MISSING = object()
#: exit status of a spawned rank that refused bad input (the parent raises its ValueError)
_BAD_INPUT_EXIT = 2


def _spawned(rank: int, world: int, port: int, queue: Any, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), GROUP_RANK="0", NODE_RANK="0")
    try:
        result = fn(*args)
    except ValueError as err:  # bad input: the parent raises it; a non-zero exit stops the other ranks
        queue.put(("ValueError", str(err)))
        raise SystemExit(_BAD_INPUT_EXIT) from None
    if rank == 0:
        queue.put(("ok", result))

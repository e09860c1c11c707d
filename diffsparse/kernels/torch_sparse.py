"""Block-sparse attention in plain PyTorch that skips the work of dropped blocks (the CPU path).

Each (batch, head, query block) is a *row*. A `Schedule` (built once per layout and shapes, cached
on the `BlockIndex`) sorts the rows by how many key blocks they keep and cuts them into *groups*:
every row of a group reads `width` key blocks, so its kept keys are gathered into one dense
`(rows, width * bk, D)` tensor and one fused attention call (PyTorch's CPU flash kernel, which also
returns the LSE) handles the whole group. Rows with a few blocks fewer than the group's width
read zero blocks instead, hidden by a broadcast key mask (at most `_PAD_SLACK` extra work), so a
layout with many distinct row lengths still runs in few calls. Rows that read every key skip the
gather: one call per head over their queries. Work scales with the kept blocks.

What we measured (docs/kernels.md): the fused kernel is compute-bound and runs near its dense
rate, so the overhead is in the glue. Each gather writes into one buffer allocated per call (a
fresh tensor per gather page-faults its memory: 12x slower), and every memory-bound step (gathers,
scatters of outputs and gradients) runs on one thread: PyTorch's 2-thread `index_select` was 4x
slower than 1 thread here, and under load from other processes each small multi-threaded region
waits for a descheduled thread (40x slower measured); only the fused kernel runs multi-threaded.

The backward walks the same groups with the fused kernel's backward and adds the key/value
gradients of the gathered blocks back with `index_add_`. Short sequences (at most `MASKED_LIMIT`
score elements) instead run one fused call with an additive token mask: the same result, without
the per-group overhead that dominates there.
"""

from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch

from .index import BlockIndex, num_blocks

# Bound on the gathered K+V elements per fused call, per worker (4 MB in fp32): keeps memory flat at
# high density and a worker's gathered keys in cache while it reads them (1M-4M elements measured
# alike here, 16M 10 % slower: experiments/README.md).
_GATHER_BUDGET = 1 << 20
# Padding a group's shorter rows to its width may add at most this fraction of work.
_PAD_SLACK = 0.05
# Up to this many score elements (B*H*Sq*Sk) on CPU, one fused call with an additive token mask
# is cheaper than many small gathered calls (per-call overhead dominates short sequences).
MASKED_LIMIT = 1 << 22


def _use_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Short sequences run one masked call; not when a key or value is NaN/inf, which a masked call
    would spread to every row (masking adds -inf to a NaN logit), where the gathered path keeps it
    to the rows whose blocks hold it."""
    B, H, Sq, _ = q.shape
    small = B * H * Sq * k.shape[2] <= MASKED_LIMIT
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float16, torch.bfloat16) and small
            and bool(torch.isfinite(k).all()) and bool(torch.isfinite(v).all()))


@contextlib.contextmanager
def serial() -> Iterator[None]:
    """Run the enclosed (memory-bound) PyTorch ops on one thread, then restore the thread count."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def _token_mask(q: torch.Tensor, index: BlockIndex, Sq: int, Sk: int):
    """Additive mask `(Bm, Hm, Sq, Sk)` in q's dtype (0 kept, -inf dropped) and the empty rows `(Bm, Hm, Sq)`."""
    bq, bk = index.block_q, index.block_k
    keep = index.mask.repeat_interleave(bq, dim=-2)[..., :Sq, :].repeat_interleave(bk, dim=-1)[..., :Sk]
    add = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill_(~keep, float("-inf"))
    empty = (index.counts == 0).repeat_interleave(bq, dim=-1)[..., :Sq]
    return add, empty


def _cpu_flash(q: torch.Tensor) -> bool:
    return q.dtype in (torch.float32, torch.float16, torch.bfloat16) and q.device.type == "cpu"


def _fused(q, k, v, scale: float, mask=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense attention `(n, 1, Lq, D) x (n, 1, Lk, D)` -> out, lse `(n, 1, Lq)` float32."""
    if _cpu_flash(q):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask, scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v), lse.float()


def _fused_backward(do, q, k, v, out, lse, scale, mask=None):
    """Gradients of `_fused`: (dq, dk, dv)."""
    if _cpu_flash(q):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            do, q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask
    p = torch.exp(s - lse.unsqueeze(-1).to(q.dtype))
    dp = torch.matmul(do, v.transpose(-1, -2))
    ds = p * (dp - (do * out).sum(-1, keepdim=True))
    return torch.matmul(ds, k) * scale, torch.matmul(ds.transpose(-1, -2), q) * scale, torch.matmul(p.transpose(-1, -2), do)


@dataclass(frozen=True)
class Group:
    """Rows `sorted[start:stop]` that run as one fused call.

    head: for rows that read every key, the flat (b*H + h) whose whole K/V they read (no gather).
    blocks: `(n, width)` flat key-block ids into the block table (`Schedule.zero_block` pads).
    key_pad: bool `(n, n_keys)`, True for gathered key tokens a row must ignore (padding blocks,
        padding past Sk in the partial last block), or None when there are none.
    n_keys: key tokens each row reads.
    """

    start: int
    stop: int
    head: Optional[int]
    blocks: Optional[torch.Tensor]
    key_pad: Optional[torch.Tensor]
    n_keys: int


class Schedule:
    """The rows of a layout for given shapes, sorted by work and cut into groups (see module doc)."""

    def __init__(self, index: BlockIndex, B: int, H: int, Sq: int, Sk: int, width_elems: int) -> None:
        bq, bk = index.block_q, index.block_k
        self.nq, self.nk, self.bk = num_blocks(Sq, bq), num_blocks(Sk, bk), bk
        self.n_rows = B * H * self.nq
        self.zero_block = B * H * self.nk  # index of the all-zero block appended to the block table
        tail = self.nk * bk - Sk  # padding tokens in the last key block
        counts = index.counts.expand(B, H, self.nq).reshape(self.n_rows).long()
        width = index.indices.shape[-1]
        indices = index.indices.expand(B, H, self.nq, width).reshape(self.n_rows, width).long()
        head = torch.arange(B * H).repeat_interleave(self.nq)
        self.order = torch.sort(-counts, stable=True).indices  # most work first; ties keep (head, block) order
        live = int((counts > 0).sum())
        self.empty = self.order[live:]
        self.order = self.order[:live]
        c_sorted = counts[self.order].tolist()
        h_sorted = head[self.order].tolist()
        groups: List[Group] = []
        i = 0
        while i < live:
            w = c_sorted[i]
            j = i + 1
            if w == self.nk:  # reads every key: one call per head, no gather
                while j < live and c_sorted[j] == w and h_sorted[j] == h_sorted[i]:
                    j += 1
                groups.append(Group(i, j, h_sorted[i], None, None, self.nk * bk - tail))
                i = j
                continue
            cap = max(1, _GATHER_BUDGET // (w * bk * width_elems))
            work = w
            while j < live and j - i < cap and c_sorted[j] < self.nk and (j - i + 1) * w <= (1 + _PAD_SLACK) * (work + c_sorted[j]):
                work += c_sorted[j]
                j += 1
            rows = self.order[i:j]
            c = counts[rows]
            pos = torch.arange(w)
            live_pos = pos < c.unsqueeze(1)
            blocks = torch.where(live_pos, head[rows].unsqueeze(1) * self.nk + indices[rows, :w], self.zero_block)
            pad = (~live_pos).repeat_interleave(bk, 1)
            if tail:
                pad = pad | ((indices[rows, :w] == self.nk - 1) & live_pos).repeat_interleave(bk, 1) & (
                    torch.arange(w * bk) % bk >= bk - tail)
            n_keys = w * bk
            if bool(pad.any()):
                # Kept blocks are ascending, so when every row's padding is only the last block's
                # tail, trimming the gathered keys drops it without a mask.
                trailing = int(pad.flip(1).long().cumprod(1).sum(1).min())
                if int(pad.sum(1).max()) == trailing:
                    n_keys, pad = n_keys - trailing, None
            else:
                pad = None
            groups.append(Group(i, j, None, blocks, pad, n_keys))
            i = j
        self.groups = groups
        self._masks: dict = {}

    def mask(self, g: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """Additive `(n, 1, 1, n_keys)` key mask of group `g` in `dtype`, or None."""
        pad = self.groups[g].key_pad
        if pad is None:
            return None
        if (g, dtype) not in self._masks:
            add = torch.zeros(pad.shape, dtype=dtype).masked_fill_(pad, float("-inf"))
            self._masks[(g, dtype)] = add[:, None, None, :]
        return self._masks[(g, dtype)]

    @property
    def max_gather(self) -> int:
        """Most blocks one group gathers (the gather buffer's rows)."""
        return max([g.blocks.numel() for g in self.groups if g.blocks is not None], default=0)


def schedule(index: BlockIndex, B: int, H: int, Sq: int, Sk: int, width_elems: int) -> Schedule:
    """The cached `Schedule` of `index` for these shapes (built on first use)."""
    key = ("cpu-schedule", B, H, Sq, Sk, width_elems)
    if key not in index._cache:
        index._cache[key] = Schedule(index.to("cpu"), B, H, Sq, Sk, width_elems)
    return index._cache[key]


def _same_head_size(q, k, v):
    """Zero-pad q/k or v along the head dim to the larger of D and Dv."""
    e = max(q.shape[-1], v.shape[-1])
    grow = lambda x: torch.nn.functional.pad(x, (0, e - x.shape[-1])) if x.shape[-1] < e else x  # noqa: E731
    return grow(q), grow(k), grow(v)


def _rows(x: torch.Tensor, nq: int, bq: int) -> torch.Tensor:
    """`(B, H, S, E)` -> `(B*H*nq, bq, E)` (zero-padded to whole blocks; a view when S is a multiple)."""
    B, H, S, E = x.shape
    if nq * bq != S:
        x = torch.nn.functional.pad(x, (0, 0, 0, nq * bq - S))
    return x.reshape(B * H * nq, bq, E)


def _block_table(k: torch.Tensor, v: torch.Tensor, nk: int, bk: int) -> torch.Tensor:
    """K and V side by side, one row per key block plus a final zero block: `(B*H*nk + 1, bk * (D + Dv))`."""
    B, H, Sk, D = k.shape
    Dv = v.shape[-1]
    table = k.new_zeros(B * H * nk + 1, bk, D + Dv)
    body = table[:-1].view(B * H, nk * bk, D + Dv)
    body[:, :Sk, :D] = k.reshape(B * H, Sk, D)
    body[:, :Sk, D:] = v.reshape(B * H, Sk, Dv)
    return table.view(B * H * nk + 1, bk * (D + Dv))


def _keys(table: torch.Tensor, sched: Schedule, g: Group, buf: torch.Tensor, D: int, Dv: int):
    """K and V `(n, 1, n_keys, D/Dv)` a group reads: views of the table (full rows) or of the gather buffer."""
    bk = sched.bk
    if g.head is not None:
        kv = table[g.head * sched.nk : (g.head + 1) * sched.nk].view(1, 1, sched.nk * bk, D + Dv)[:, :, : g.n_keys]
    else:
        n, w = g.blocks.shape
        out = buf[: n * w]
        torch.index_select(table, 0, g.blocks.reshape(-1), out=out)
        kv = out.view(n, 1, w * bk, D + Dv)[:, :, : g.n_keys]
    return kv[..., :D], kv[..., D:]


def _group_rows(x_rows: torch.Tensor, sched: Schedule, g: Group, buf: torch.Tensor) -> torch.Tensor:
    """Query-side rows of a group: `(n, 1, bq, E)`, or `(1, 1, n*bq, E)` for a full-key group."""
    n = g.stop - g.start
    out = buf[:n]
    torch.index_select(x_rows, 0, sched.order[g.start : g.stop], out=out)
    return out.view(1, 1, -1, x_rows.shape[-1]) if g.head is not None else out.unsqueeze(1)


def _run_groups(n_groups: int, work, static: bool) -> List[dict]:
    """Call `work(g, local)` for every group g on `torch.get_num_threads()` worker threads, each running
    PyTorch ops on one intra-op thread (`local`: that worker's dict for its buffers). Forward groups are
    handed out as workers free up; with `static`, group g goes to worker g % n (a fixed summation order
    for the backward's per-worker accumulators). One worker or one group: inline, multi-threaded.
    Returns the workers' dicts."""
    n = torch.get_num_threads()
    if n <= 1 or n_groups <= 1:
        local: dict = {}
        for g in range(n_groups):
            work(g, local)
        return [local]
    locals_ = [dict() for _ in range(n)]
    # Grad and inference mode are per thread: a worker runs under the caller's inference mode and never
    # records autograd (inside the custom op the caller's thread is below autograd; a new thread is not).
    inference = torch.is_inference_mode_enabled()

    def run(g: int, w: int) -> None:
        with torch.inference_mode(inference), torch.no_grad():
            work(g, locals_[w])

    pool = ThreadPoolExecutor(n, initializer=torch.set_num_threads, initargs=(1,))
    try:
        if static:
            def lane(w: int) -> None:
                for g in range(w, n_groups, n):
                    run(g, w)

            futures = [pool.submit(lane, w) for w in range(n)]
        else:
            ids = threading.local()
            counter = iter(range(n))
            lock = threading.Lock()

            def task(g: int) -> None:
                if not hasattr(ids, "w"):
                    with lock:
                        ids.w = next(counter)
                run(g, ids.w)

            futures = [pool.submit(task, g) for g in range(n_groups)]
        for f in futures:
            f.result()
    finally:
        pool.shutdown(wait=True)
        torch.set_num_threads(n)  # the workers' set_num_threads(1) also set the process-wide default
    return locals_


def torch_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    scale: float | None = None,
    return_lse: bool = False,
):
    """q `(B,H,Sq,D)`, k/v `(B,H,Sk,D)`, index over `(Bm,Hm,nq,nk)` -> out `(B,H,Sq,Dv)` [, lse `(B,H,Sq)`]."""
    B, H, Sq, D = q.shape
    Sk, Dv = k.shape[2], v.shape[-1]
    bq, bk = index.block_q, index.block_k
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if Dv != D:  # the fused CPU kernel wants one head size: zero channels change no logit and no output
        q, k, v = _same_head_size(q, k, v)
        out, lse = torch_block_sparse_attention(q, k, v, index, scale, True)
        return (out[..., :Dv], lse) if return_lse else out[..., :Dv]
    if _use_masked(q, k, v):
        add, empty = _token_mask(q, index, Sq, Sk)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=add, scale=scale)
        out = torch.where(empty.unsqueeze(-1), torch.zeros((), dtype=out.dtype), out)
        lse = torch.where(empty, float("-inf"), lse.float())
        return (out, lse) if return_lse else out
    sched = schedule(index, B, H, Sq, Sk, D + Dv)
    with serial():
        q_rows = _rows(q, sched.nq, bq)
        table = _block_table(k, v, sched.nk, bk)
        out_rows = q.new_zeros(sched.n_rows, bq, Dv)
        lse_rows = torch.full((sched.n_rows, bq), float("-inf"), device=q.device)
    n_max = max([g.stop - g.start for g in sched.groups], default=0)

    def work(gi: int, local: dict) -> None:
        g = sched.groups[gi]
        if not local:  # this worker's buffers, allocated once per call (fresh tensors page-fault)
            local["gather"] = table.new_empty(sched.max_gather, table.shape[1])
            local["q"] = q_rows.new_empty(n_max, bq, D)
        qg = _group_rows(q_rows, sched, g, local["q"])
        kg, vg = _keys(table, sched, g, local["gather"], D, Dv)
        o, lse = _fused(qg, kg, vg, scale, sched.mask(gi, q.dtype))
        rows = sched.order[g.start : g.stop]  # rows of different groups are disjoint: no race
        out_rows.index_copy_(0, rows, o.reshape(-1, bq, Dv))
        lse_rows.index_copy_(0, rows, lse.reshape(-1, bq))

    _run_groups(len(sched.groups), work, static=False)
    out = out_rows.view(B, H, sched.nq * bq, Dv)[:, :, :Sq]
    if not return_lse:
        return out
    return out, lse_rows.view(B, H, sched.nq * bq)[:, :, :Sq]


def torch_block_sparse_backward(q, k, v, out, lse, dout, index: BlockIndex, scale: float):
    """(dq, dk, dv) of `torch_block_sparse_attention` given its out and lse `(B, H, Sq)`."""
    B, H, Sq, D = q.shape
    Sk, Dv = k.shape[2], v.shape[-1]
    bq, bk = index.block_q, index.block_k
    if Dv != D:
        qp, kp, vp = _same_head_size(q, k, v)
        pad = (0, qp.shape[-1] - Dv)
        dout_p, out_p = torch.nn.functional.pad(dout, pad), torch.nn.functional.pad(out, pad)
        dq, dk, dv = torch_block_sparse_backward(qp, kp, vp, out_p, lse, dout_p, index, scale)
        return dq[..., :D], dk[..., :D], dv[..., :Dv]
    if _use_masked(q, k, v):
        add, _ = _token_mask(q, index, Sq, Sk)
        # Empty rows: out 0 and a finite lse make their probabilities exp(-inf - 0) = 0.
        lse0 = torch.where(torch.isfinite(lse), lse.float(), 0.0)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.to(q.dtype).contiguous(), q, k, v, out.to(q.dtype), lse0, 0.0, False, attn_mask=add, scale=scale)
    sched = schedule(index, B, H, Sq, Sk, D + Dv)
    nk = sched.nk
    with serial():
        q_rows, o_rows, do_rows = (_rows(x, sched.nq, bq) for x in (q, out.to(q.dtype), dout.to(q.dtype)))
        # Padded query rows get lse 0: their dout is 0, so they contribute nothing.
        lse_rows = _rows(lse.float().unsqueeze(-1), sched.nq, bq).squeeze(-1)
        lse_rows = torch.where(torch.isfinite(lse_rows), lse_rows, torch.zeros_like(lse_rows))
        table = _block_table(k, v, nk, bk)
        dq_rows = torch.zeros_like(q_rows)
    n_max = max([g.stop - g.start for g in sched.groups], default=0)

    def work(gi: int, local: dict) -> None:
        g = sched.groups[gi]
        n = g.stop - g.start
        if not local:
            local["gather"] = table.new_empty(sched.max_gather, table.shape[1])
            local["rows"] = [x.new_empty(n_max, bq, x.shape[-1]) for x in (q_rows, o_rows, do_rows)]
            # this worker's key-block gradients (+ the zero block, which collects the padding's)
            local["dk"] = torch.zeros(B * H * nk + 1, bk, D, dtype=torch.float32, device=q.device)
            local["dv"] = torch.zeros(B * H * nk + 1, bk, Dv, dtype=torch.float32, device=q.device)
        rows = sched.order[g.start : g.stop]
        qg, og, dog = (_group_rows(x, sched, g, b) for x, b in zip((q_rows, o_rows, do_rows), local["rows"]))
        kg, vg = _keys(table, sched, g, local["gather"], D, Dv)
        lse_g = lse_rows.index_select(0, rows)
        lse_g = lse_g.reshape(1, 1, -1) if g.head is not None else lse_g.unsqueeze(1)
        dq, dk, dv = _fused_backward(dog, qg, kg, vg, og, lse_g, scale, sched.mask(gi, q.dtype))
        dq_rows.index_copy_(0, rows, dq.reshape(n, bq, D))  # disjoint rows per group
        dk_blocks, dv_blocks = local["dk"], local["dv"]
        if g.head is not None:
            seg = slice(g.head * nk, (g.head + 1) * nk)
            dk_blocks[seg].view(-1, D)[: g.n_keys] += dk[0, 0].float()
            dv_blocks[seg].view(-1, Dv)[: g.n_keys] += dv[0, 0].float()
            return
        w = g.blocks.shape[1]
        pad = (0, 0, 0, w * bk - g.n_keys)
        flat = g.blocks.reshape(-1)
        dk_blocks.index_add_(0, flat, torch.nn.functional.pad(dk[:, 0].float(), pad).reshape(n * w, bk, D))
        dv_blocks.index_add_(0, flat, torch.nn.functional.pad(dv[:, 0].float(), pad).reshape(n * w, bk, Dv))

    workers = _run_groups(len(sched.groups), work, static=True)
    with serial():
        parts = [w for w in workers if w]
        if parts:
            dk_blocks, dv_blocks = parts[0]["dk"], parts[0]["dv"]
            for w in parts[1:]:  # fixed order: deterministic sums
                dk_blocks += w["dk"]
                dv_blocks += w["dv"]
        else:
            dk_blocks = torch.zeros(B * H * nk + 1, bk, D, dtype=torch.float32, device=q.device)
            dv_blocks = torch.zeros(B * H * nk + 1, bk, Dv, dtype=torch.float32, device=q.device)
    dq = dq_rows.reshape(B, H, sched.nq * bq, D)[:, :, :Sq]
    dk = dk_blocks[:-1].reshape(B, H, nk * bk, D)[:, :, :Sk].to(k.dtype)
    dv = dv_blocks[:-1].reshape(B, H, nk * bk, Dv)[:, :, :Sk].to(v.dtype)
    return dq, dk, dv

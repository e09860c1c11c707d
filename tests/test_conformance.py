"""Faithful to the anchors: our layouts against figures measured on the anchors' own code.

Radial: mit-han-lab/radial-attention `gen_log_mask_shrinked` (commit 72788d4), run on the same
geometry with block 128 (the reference pads the video to a block multiple and treats the partial
block as text, so the figures compare whole blocks). Recorded per geometry: whole blocks per side,
kept whole blocks, the reference's density over its padded mask, and the first 16 hex digits of
SHA-256 over `numpy.packbits` of its whole-block mask. Sliding window: FastVideo STA's HunyuanVideo
setting and NATTEN's neighbourhood rule, written from their definitions.
"""

import hashlib
import math

import numpy as np
import pytest
import torch

import diffsparse
from diffsparse.geometry import Grid
from diffsparse.methods import get_method

# family, latent grid (T, H, W), decay_factor, whole blocks, kept whole blocks, reference density
# (padded, partial block dense), reference density on whole blocks, digest of the whole-block mask
RADIAL_REFERENCE = [
    ("wan", (21, 30, 52), 0.2, 255, 22023, 0.3438, 0.3387, "021873b557e53dfc"),  # Wan 480p 81f
    ("wan", (18, 48, 80), 0.2, 540, 83728, 0.2871, 0.2871, "0ef2058445758131"),  # Wan 768x1280 69f
    ("hunyuan", (30, 48, 80), 0.95, 900, 222452, 0.2746, 0.2746, "bddae0f0c46ab369"),  # Hunyuan 768x1280 117f
    ("wan", (9, 16, 16), 0.2, 18, 284, 0.8765, 0.8765, "b0e03605efee1b2e"),
    ("hunyuan", (9, 16, 16), 0.95, 18, 276, 0.8519, 0.8519, "fa30c2cb9075abb7"),
    ("wan", (21, 45, 80), 0.2, 590, 91264, 0.2647, 0.2622, "b6c4389fb0a8805a"),  # Wan 720p 81f
    ("wan", (31, 30, 52), 0.2, 377, 39070, 0.2787, 0.2749, "39afb44fade90f9b"),  # Wan 480p 121f
    ("wan", (13, 17, 23), 0.2, 39, 1057, 0.7100, 0.6949, "52fb022a4a5c6c37"),  # odd sizes, 391 tokens/frame
    ("wan", (11, 8, 40), 0.5, 27, 592, 0.8253, 0.8121, "6e28f19f449722b8"),  # frames spill into a 3rd block
    ("hunyuan", (17, 34, 60), 0.95, 270, 27029, 0.3754, 0.3708, "a29d813df029a9c1"),
    ("hunyuan", (9, 30, 40), 0.5, 84, 3860, 0.5576, 0.5471, "39a2e0a11812986a"),
]


def digest(mask: torch.Tensor) -> str:
    return hashlib.sha256(np.packbits(mask.numpy()).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("family, grid, decay, whole, kept, dens_padded, dens_whole, sha", RADIAL_REFERENCE)
def test_radial_preset_reproduces_the_reference_layout(family, grid, decay, whole, kept, dens_padded, dens_whole, sha):
    mask = diffsparse.block_layout("radial", grid, family=family, decay_factor=decay).mask
    assert mask.shape[0] == math.ceil(math.prod(grid) / 128)
    core = mask[:whole, :whole]
    assert int(core.sum()) == kept
    assert round(float(core.float().mean()), 4) == dens_whole
    assert digest(core) == sha  # every whole block equal
    # The reference's density over its padded mask: the partial block treated as text (dense)
    padded = torch.ones(-(-math.prod(grid) // 128), -(-math.prod(grid) // 128), dtype=torch.bool)
    padded[:whole, :whole] = core
    assert round(float(padded.float().mean()), 4) == dens_padded


def test_family_presets_are_the_references():
    # The reference adds the frame-0 sink for Wan only; decay 0.2 (Wan) and 0.95 (HunyuanVideo).
    wan, hy = get_method("radial")("wan"), get_method("radial")("hunyuan")
    assert (wan.decay_factor, wan.attention_sink, hy.decay_factor, hy.attention_sink) == (0.2, True, 0.95, False)
    assert wan.band == hy.band == "reference" and wan.block_select == hy.block_select == "strict"


def reference_rule_tokens(grid: Grid, decay: float, sink: bool, floor: int) -> torch.Tensor:
    """Token mask of the reference rule, written from its statement (raster x raster)."""
    s = grid.h * grid.w
    f = torch.arange(grid.numel) // s
    a = torch.arange(grid.numel) % s
    m = torch.zeros(grid.numel, grid.numel, dtype=torch.bool)
    for i in range(grid.t):
        for j in range(grid.t):
            d = abs(i - j)
            block = m[(f == i).nonzero()[:, 0][:, None], (f == j).nonzero()[:, 0][None, :]]
            if d <= 1 or (sink and j == 0):
                keep = torch.ones_like(block)
            else:
                undecayed = 2 ** s.bit_length() / 2 ** d.bit_length()
                if undecayed < floor and d % int(floor / undecayed) != 0:
                    keep = torch.zeros_like(block)
                else:
                    keep = (a[:s, None] - a[None, :s]).abs() <= max(decay * undecayed, floor)
            m[(f == i).nonzero()[:, 0][:, None], (f == j).nonzero()[:, 0][None, :]] = keep
    return m


def strict_blocks(tokens: torch.Tensor, grid: Grid, bq: int, bk: int) -> torch.Tensor:
    """Blocks by the reference's strict selection, brute force: per block and frame pair, the piece
    inside the frames' judged windows (ceil(s/b) blocks from the frame's first block) keeps the
    block when more than 60 % of its non-empty columns are attended by more than bq/3 rows."""
    s, n = grid.h * grid.w, grid.numel
    nq, nk = -(-n // bq), -(-n // bk)
    out = torch.zeros(nq, nk, dtype=torch.bool)
    frame = torch.arange(n) // s
    pos = torch.arange(n)
    judged_q = pos // bq < (frame * s) // bq + -(-s // bq)
    judged_k = pos // bk < (frame * s) // bk + -(-s // bk)
    for bi in range(nq):
        for bj in range(nk):
            for i in frame[bi * bq : (bi + 1) * bq].unique().tolist():
                rows = [r for r in range(bi * bq, min(n, (bi + 1) * bq)) if frame[r] == i and judged_q[r]]
                for j in frame[bj * bk : (bj + 1) * bk].unique().tolist():
                    cols = [c for c in range(bj * bk, min(n, (bj + 1) * bk)) if frame[c] == j and judged_k[c]]
                    if not rows or not cols:
                        continue
                    density = tokens[rows][:, cols].sum(0).double() / bq
                    nonzero, high = int((density > 0).sum()), int((density > 1 / 3).sum())
                    out[bi, bj] |= high / (nonzero + 1e-9) > 0.6
    return out


@pytest.mark.parametrize("grid", [Grid(9, 3, 5), Grid(12, 2, 3), Grid(6, 4, 4)])
@pytest.mark.parametrize("decay, floor", [(1.0, 2), (0.3, 4), (2.0, 1)])
def test_radial_reference_rule_at_token_level(grid, decay, floor):
    method = get_method("radial")("wan", decay_factor=decay, band_floor=floor)
    _, mask = method.video_layout(grid, 1, 1)
    assert torch.equal(mask[0], reference_rule_tokens(grid, decay, True, floor))
    layout = diffsparse.block_layout("radial", tuple(grid.dims), block_size=1, decay_factor=decay, band_floor=floor)
    assert torch.equal(layout.mask, mask[0]) and layout.order is None


@pytest.mark.parametrize("grid", [Grid(9, 3, 5), Grid(7, 4, 5), Grid(5, 3, 11)])
@pytest.mark.parametrize("block", [(4, 4), (6, 5), (9, 3), (16, 16)])
@pytest.mark.parametrize("sink", [True, False])
def test_radial_strict_selection_matches_brute_force(grid, block, sink):
    decay, floor = 0.5, 2
    tokens = reference_rule_tokens(grid, decay, sink, floor)
    method = get_method("radial")("wan", decay_factor=decay, band_floor=floor, attention_sink=sink)
    _, strict = method.video_layout(grid, *block)
    assert torch.equal(strict[0], strict_blocks(tokens, grid, *block))
    # block_select="any" keeps every block holding an allowed pair: a superset of "strict"
    _, anyb = get_method("radial")("wan", decay_factor=decay, band_floor=floor, attention_sink=sink,
                                   block_select="any").video_layout(grid, *block)
    expect = torch.zeros_like(anyb[0])
    for bi in range(expect.shape[0]):
        for bj in range(expect.shape[1]):
            expect[bi, bj] = tokens[bi * block[0] : (bi + 1) * block[0], bj * block[1] : (bj + 1) * block[1]].any()
    assert torch.equal(anyb[0], expect) and bool((anyb[0] | strict[0]).equal(anyb[0]))


def test_radial_options_are_validated():
    with pytest.raises(ValueError, match="band"):
        get_method("radial")("wan", band="log")
    with pytest.raises(ValueError, match="block_select"):
        get_method("radial")("wan", block_select="all")
    with pytest.raises(ValueError, match="band_floor"):
        get_method("radial")("wan", band_floor=0)


def test_sliding_window_hunyuan_preset_is_sta():
    # FastVideo STA's HunyuanVideo setting: tiles (6, 8, 8), window (3, 3, 3) tiles: 0.090 at (30, 48, 80)
    method = get_method("sliding_window")("hunyuan")
    assert (method.tile, method.window_tiles) == ((6, 8, 8), (3, 3, 3))
    assert round(diffsparse.block_layout("sliding_window", (30, 48, 80), family="hunyuan").density, 3) == 0.090


def natten_window(x: int, length: int, k: int) -> range:
    """NATTEN's neighbourhood of x (dilation 1): keys [x - k//2, x - k//2 + k - 1] shifted inside the axis."""
    start = min(max(x - k // 2, 0), length - k)
    return range(start, start + k)


@pytest.mark.parametrize("kernel", [(2, 4, 4), (3, 3, 3), (1, 5, 2), (4, 6, 5)])
def test_sliding_window_inward_is_nattens_neighbourhood(kernel):
    grid = Grid(4, 6, 6)
    layout = diffsparse.block_layout("sliding_window", grid.dims, block_size=1, tile=(1, 1, 1), window=kernel, inward=True)
    coords = [(t, h, w) for t in range(4) for h in range(6) for w in range(6)]
    expect = torch.tensor([[all(y in natten_window(x, L, k) for x, y, L, k in zip(cq, ck, grid.dims, kernel))
                            for ck in coords] for cq in coords])
    assert torch.equal(layout.mask, expect)
    assert torch.equal(layout.mask.sum(1), torch.full((grid.numel,), math.prod(kernel)))  # full size everywhere


def test_block_layout_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="grid H must be a positive int, got 0"):
        diffsparse.block_layout("radial", (3, 0, 4))
    with pytest.raises(ValueError, match="unknown model family 'sdxl'"):
        diffsparse.block_layout("radial", (3, 4, 4), family="sdxl")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        diffsparse.block_layout("nope", (3, 4, 4))
    with pytest.raises(ValueError, match="save-layouts"):
        diffsparse.block_layout("adaspa", (3, 4, 4))
    with pytest.raises(ValueError, match="text_len"):
        diffsparse.block_layout("radial", (3, 4, 4), text_len=-5)


def test_block_layout_text_and_order():
    layout = diffsparse.block_layout("grat", (1, 8, 8), family="flux", block_size=4, text_len=8)
    assert layout.mask.shape == (18, 18) and layout.mask[16:].all() and layout.mask[:, 16:].all()
    # FLUX puts text first in the model; the layout's order is [image in group order ; text]
    assert sorted(layout.order.tolist()) == list(range(72)) and layout.order[-8:].tolist() == list(range(8))

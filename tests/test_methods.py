"""Each method's block layout against a brute-force token-level statement of its definition."""

import itertools
import math

import pytest
import torch

from diffsparse.geometry import Grid, tile_major_order
from diffsparse.methods import get_method


def coords(grid):
    return [(t, h, w) for t in range(grid.t) for h in range(grid.h) for w in range(grid.w)]


def blocks_from_tokens(token_mask, order, bq, bk):
    """Reduce a token mask (raster x raster) to blocks of the ordered sequence with the 'any' rule."""
    m = token_mask[order][:, order]
    n = m.shape[0]
    nq, nk = -(-n // bq), -(-n // bk)
    out = torch.zeros(nq, nk, dtype=torch.bool)
    for i in range(nq):
        for j in range(nk):
            out[i, j] = m[i * bq : (i + 1) * bq, j * bk : (j + 1) * bk].any()
    return out


def radial_tokens(grid, decay, sink=True):
    s = grid.h * grid.w
    cs = coords(grid)
    n = len(cs)
    m = torch.zeros(n, n, dtype=torch.bool)
    for qi, (i, hq, wq) in enumerate(cs):
        for ki, (j, hk, wk) in enumerate(cs):
            a, b = hq * grid.w + wq, hk * grid.w + wk
            d = abs(i - j)
            k = int(math.floor(math.log2(max(d, 1))))
            if d <= 1 or (sink and j == 0):
                m[qi, ki] = True
            elif 2**k <= s:
                m[qi, ki] = abs(a - b) + 1 <= max(decay * s / 2**k, 1.0)
            else:
                m[qi, ki] = d % math.ceil(2**k / s) == 0 and a == b
    return m


@pytest.mark.parametrize("grid", [Grid(9, 3, 5), Grid(20, 1, 2)])
@pytest.mark.parametrize("decay", [1.0, 0.3])
@pytest.mark.parametrize("block", [(1, 1), (4, 4), (7, 5)])
def test_radial_paper_rule_matches_definition(grid, decay, block):
    # band="paper", block_select="any": the paper's formula, every block holding an allowed pair
    method = get_method("radial")("wan", decay_factor=decay, band="paper", block_select="any")
    _, mask = method.video_layout(grid, *block)
    expect = blocks_from_tokens(radial_tokens(grid, decay), torch.arange(grid.numel), *block)
    assert torch.equal(mask[0], expect)


def test_radial_band_halves_with_each_power_of_two_and_sink_and_near_frames():
    grid = Grid(17, 4, 8)  # s = 32 tokens per frame
    _, mask = get_method("radial")("wan", decay_factor=1.0, band="paper").video_layout(grid, 1, 1)
    m = mask[0].view(17, 32, 17, 32)
    q = 16  # last frame as query, looking back
    width = {d: m[q, :, q - d, :].sum(-1).float().max().item() for d in range(1, 17)}
    assert m[q, :, q].all() and m[q, :, q - 1].all()  # near frames dense
    assert m[:, :, 0].all()  # frame 0 is a dense column (sink)
    # widest row of the band: 2w - 1 tokens for |a - b| + 1 <= w with w = s / 2^k
    for d in (2, 3):
        assert width[d] == 2 * 16 - 1
    for d in (4, 5, 6, 7):
        assert width[d] == 2 * 8 - 1
    for d in range(8, 16):
        assert width[d] == 2 * 4 - 1
    no_sink = get_method("radial")("wan", decay_factor=1.0, band="paper", attention_sink=False).video_layout(grid, 1, 1)[1][0]
    assert not no_sink.view(17, 32, 17, 32)[q, :, 0].all()


def window_tokens(grid, tile, size, inward, unit):
    """Token mask of a sliding window with window `size` per axis, in tokens or tiles."""
    cs = coords(grid)
    lengths = grid.dims if unit == "tokens" else tuple(-(-g // t) for g, t in zip(grid.dims, tile))
    conv = (lambda c: c) if unit == "tokens" else (lambda c: tuple(x // t for x, t in zip(c, tile)))

    def reach(x, y, length, k):
        if k >= length:
            return True
        lo = x - k // 2  # NATTEN's neighbourhood: [x - k//2, x - k//2 + k - 1]
        if inward:
            lo = min(max(lo, 0), length - k)
        return lo <= y <= lo + k - 1

    n = len(cs)
    m = torch.zeros(n, n, dtype=torch.bool)
    for qi, cq in enumerate(cs):
        for ki, ck in enumerate(cs):
            m[qi, ki] = all(reach(x, y, L, k) for x, y, L, k in zip(conv(cq), conv(ck), lengths, size))
    return m


@pytest.mark.parametrize("inward", [True, False])
@pytest.mark.parametrize("block", [(4, 4), (6, 3)])
def test_sliding_window_tiles_exact(inward, block):
    grid, tile, size = Grid(5, 5, 6), (2, 2, 3), (1, 3, 1)
    order, mask = get_method("sliding_window")("wan", tile=tile, window_tiles=size, inward=inward).video_layout(grid, *block)
    assert torch.equal(order, tile_major_order(grid, tile))
    assert torch.equal(mask[0], blocks_from_tokens(window_tokens(grid, tile, size, inward, "tiles"), order, *block))


@pytest.mark.parametrize("inward", [True, False])
def test_sliding_window_tokens(inward):
    # Tiles aligned with blocks: exact. Misaligned: never drops an allowed pair (superset).
    grid, tile, size = Grid(4, 6, 6), (1, 2, 2), (3, 3, 3)
    method = get_method("sliding_window")("wan", tile=tile, window=size, inward=inward)
    order, mask = method.video_layout(grid, 4, 4)
    expect = blocks_from_tokens(window_tokens(grid, tile, size, inward, "tokens"), order, 4, 4)
    assert torch.equal(mask[0], expect)
    order, mask = method.video_layout(grid, 5, 3)
    expect = blocks_from_tokens(window_tokens(grid, tile, size, inward, "tokens"), order, 5, 3)
    assert (mask[0] | expect).equal(mask[0]) and mask[0].float().mean() < 1


def test_sliding_window_inward_keeps_full_window_at_borders():
    grid = Grid(1, 1, 10)
    for inward, expect in ((True, 5), (False, 3)):
        _, mask = get_method("sliding_window")("flux", tile=(1, 1, 1), window=(1, 5), inward=inward).video_layout(grid, 1, 1)
        assert mask[0, 0].sum() == expect and mask[0, 5].sum() == 5


def grat_tokens(grid, group, variant, radius):
    split = [i for i in range(3) if grid.dims[i] > group[i]]
    cs = coords(grid)
    n = len(cs)
    m = torch.zeros(n, n, dtype=torch.bool)
    for qi, cq in enumerate(cs):
        for ki, ck in enumerate(cs):
            gq = [x // g for x, g in zip(cq, group)]
            gk = [x // g for x, g in zip(ck, group)]
            if variant == "criss_cross":
                m[qi, ki] = any(gq[i] == gk[i] for i in split)
            else:
                m[qi, ki] = all(abs(a - b) <= radius for a, b in zip(gq, gk))
    return m


@pytest.mark.parametrize("variant, radius", [("criss_cross", 1), ("block", 0), ("block", 1)])
@pytest.mark.parametrize("block", [(4, 4), (5, 7)])
def test_grat_matches_definition(variant, radius, block):
    grid, group = Grid(5, 6, 4), (2, 3, 2)
    order, mask = get_method("grat")("wan", group_size=group, variant=variant, radius=radius).video_layout(grid, *block)
    assert torch.equal(mask[0], blocks_from_tokens(grat_tokens(grid, group, variant, radius), order, *block))


def test_grat_criss_cross_on_an_image_is_row_and_column_bands():
    grid, group = Grid(1, 8, 8), (1, 2, 2)
    order, mask = get_method("grat")("flux", group_size=group, variant="criss_cross").video_layout(grid, 4, 4)
    assert torch.equal(mask[0], blocks_from_tokens(grat_tokens(grid, group, "criss_cross", 0), order, 4, 4))
    assert mask[0].float().mean() == pytest.approx(7 / 16)  # 4x4 groups: same row or column band


def test_tile_major_order_is_a_permutation_with_contiguous_tiles():
    grid, tile = Grid(3, 5, 7), (2, 2, 3)
    order = tile_major_order(grid, tile)
    assert torch.equal(order.sort().values, torch.arange(grid.numel))
    t, h, w = order // 35, (order // 7) % 5, order % 7
    tile_id = [(a // 2, b // 2, c // 3) for a, b, c in zip(t.tolist(), h.tolist(), w.tolist())]
    seen = [k for k, _ in itertools.groupby(tile_id)]
    assert len(seen) == len(set(seen))  # every tile appears as one contiguous run


def test_presets_give_every_family_a_sensible_default():
    for name in ("radial", "sliding_window", "grat"):
        for family in ("wan", "hunyuan", "flux"):
            if name == "radial" and family == "flux":
                continue
            method = get_method(name)(family)
            _, mask = method.video_layout(Grid(21, 30, 52) if family != "flux" else Grid(1, 64, 64), 128, 128)
            assert 0 < mask.float().mean() < 0.9, (name, family, mask.float().mean())

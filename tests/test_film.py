"""The film adds pass blocks in canonical order, whatever order units arrive in."""

import numpy as np
import pytest

from meshrender.film import Film, FilmError
from meshrender.settings import RenderSettings
from meshrender.units import UnitResult, WorkUnit, bucket_grid, frame_units, whole_frame_unit

S = RenderSettings(width=40, height=24, spp=10, pass_spp=3, bucket_px=16)


def fake_result(unit: WorkUnit) -> UnitResult:
    """Per-pass blocks whose values depend only on (pixel, pass), like the kernel's; values of
    mixed magnitude so that adding them in another order would change low bits."""
    blocks = []
    ys, xs = np.mgrid[unit.y0 : unit.y0 + unit.height, unit.x0 : unit.x0 + unit.width]
    for k in unit.passes:
        v = ((ys * 7.1 + xs * 3.3 + k * 1.7) % 1.3) * 1e-3 + k * 0.7 + 1e-7 * ys
        blocks.append(np.stack([v, v * 0.5, v * 0.25], -1).astype(np.float32))
    counts = [S.pass_range(k)[1] - S.pass_range(k)[0] for k in unit.passes]
    return UnitResult(unit=unit, sums=np.stack(blocks), sample_counts=counts)


def reference_sums() -> np.ndarray:
    acc = np.zeros((S.height, S.width, 3), np.float32)
    whole = fake_result(whole_frame_unit(S))
    for k in range(S.pass_count):
        acc += whole.sums[k]
    return acc


def test_grid_and_units_cover_the_frame_once():
    cover = np.zeros((S.height, S.width), int)
    for x, y, w, h in bucket_grid(S):
        cover[y : y + h, x : x + w] += 1
    assert (cover == 1).all()
    units = frame_units(S)
    assert len(units) == len(bucket_grid(S)) * S.pass_count == 6 * 4
    assert S.pass_range(S.pass_count - 1) == (9, 10)  # the last pass is short


@pytest.mark.parametrize("seed", range(5))
def test_any_arrival_order_gives_identical_bits(seed):
    units = frame_units(S)
    order = np.random.default_rng(seed).permutation(len(units))
    film = Film(S)
    for i in order:
        film.add(fake_result(units[i]))
    assert film.complete
    ref = reference_sums()
    assert np.array_equal(film.sums.view(np.uint32), ref.view(np.uint32))
    assert (film.samples == S.spp).all()


def test_whole_frame_unit_equals_buckets():
    a, b = Film(S), Film(S)
    a.add(fake_result(whole_frame_unit(S)))
    for u in frame_units(S, passes_per_unit=2):
        b.add(fake_result(u))
    assert a.complete and b.complete
    assert np.array_equal(a.sums.view(np.uint32), b.sums.view(np.uint32))


def test_out_of_order_pass_waits_for_its_predecessor():
    film = Film(S)
    u0, u1 = (WorkUnit(x0=0, y0=0, width=16, height=16, pass_index=k) for k in (0, 1))
    assert film.add(fake_result(u1)) == 0  # pass 1 cannot go in before pass 0
    assert film.passes_done(u0) == 0
    assert film.add(fake_result(u0)) == 2
    assert film.passes_done(u0) == 2


def test_duplicates_are_compared_bit_for_bit():
    film = Film(S)
    u = WorkUnit(x0=16, y0=0, width=16, height=16, pass_index=0)
    film.add(fake_result(u))
    assert film.add(fake_result(u)) == 0  # identical duplicate: accepted, not added twice
    assert (film.samples[0:16, 16:32] == 3).all()
    with pytest.raises(FilmError, match="differs"):
        film.add(_perturbed(fake_result(u)))


def _perturbed(r: UnitResult) -> UnitResult:
    sums = r.sums.copy()
    sums.view(np.uint32)[0, 3, 3, 1] ^= 1  # one bit of one channel of one pixel
    return UnitResult(unit=r.unit, sums=sums, sample_counts=r.sample_counts)


def test_results_that_do_not_fit_are_refused():
    film = Film(S, frame=2)
    u = WorkUnit(frame=2, x0=32, y0=16, width=16, height=16, pass_index=0)  # reaches past 40x24
    with pytest.raises(FilmError, match="outside"):
        film.add(UnitResult(unit=u, sums=np.zeros((1, 16, 16, 3), np.float32), sample_counts=[3]))
    wrong_frame = WorkUnit(frame=0, x0=0, y0=0, width=8, height=8, pass_index=0)
    with pytest.raises(FilmError, match="frame"):
        film.add(fake_result(wrong_frame))
    with pytest.raises(ValueError):
        UnitResult(unit=wrong_frame, sums=np.zeros((1, 8, 8, 3), np.float64), sample_counts=[3])


def test_the_order_matters_for_these_values():
    """Guards the tests above: summing these passes in another order changes bits."""
    whole = fake_result(whole_frame_unit(S)).sums
    fwd = ((whole[0] + whole[1]) + whole[2]) + whole[3]
    rev = ((whole[3] + whole[2]) + whole[1]) + whole[0]
    assert not np.array_equal(fwd.view(np.uint32), rev.view(np.uint32))

"""The path tracer: determinism across splits and processes, energy, and Mitsuba agreement."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import numpy as np
import pytest
from conftest import CORNELL_REF, REPO
from scenes import furnace_scene

from meshrender.film import Film
from meshrender.output import read_exr
from meshrender.render import render_frame
from meshrender.scene.compile import compile_scene
from meshrender.scene.types import MaterialDesc
from meshrender.settings import RenderSettings
from meshrender.units import frame_units, whole_frame_unit

# small, odd-sized frame: 4 x 4 buckets of 12 px (the last row and column short), 4 passes
SMALL = RenderSettings(width=45, height=40, spp=8, pass_spp=2, bucket_px=12, max_depth=8)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def test_one_unit_equals_16_buckets_x_4_passes_in_any_order(cornell, renderer_for):
    r = renderer_for(cornell)
    whole = Film(SMALL)
    whole.add(r.render_unit(whole_frame_unit(SMALL), SMALL))
    units = frame_units(SMALL)
    assert len(units) == 16 * 4
    shuffled = [units[i] for i in np.random.default_rng(7).permutation(len(units))]
    split = render_frame(r, SMALL, units=shuffled)
    assert whole.complete and split.complete
    assert np.array_equal(bits(whole.sums), bits(split.sums))
    assert whole.image().mean() > 0.05  # a real image, not zeros on both sides
    # and a different seed gives a different image: the comparison above can fail
    other = render_frame(r, msgspec.structs.replace(SMALL, seed=1), units=units[:16])
    assert not np.array_equal(bits(other.sums), bits(split.sums))


def test_sums_written_into_host_arrays_equal_the_device_buffer_path(cornell, renderer_for):
    """On the CPU the kernel writes each pass into the unit's numpy arrays; on a GPU it writes
    device buffers that are copied out. Both ways, here on the CPU, give the same bits."""
    r = renderer_for(cornell)
    units = frame_units(SMALL)[:8]
    host = render_frame(r, SMALL, units=units)
    r.device_out = True
    try:
        device = render_frame(r, SMALL, units=units)
    finally:
        r.device_out = False
    assert host.image().mean() > 0.0
    assert np.array_equal(bits(host.sums), bits(device.sums))
    assert np.array_equal(bits(host.aov_sums), bits(device.aov_sums))


def test_scene_arrays_read_in_place_equal_the_uploaded_copies(cornell, monkeypatch):
    """On the CPU the kernel reads the scene's numpy arrays; on a GPU it reads Taichi ndarrays
    filled from them. Both ways, here on the CPU, give the same bits."""
    from meshrender.render import Renderer

    in_place = Renderer(cornell, backend="cpu")
    monkeypatch.setattr(Renderer, "host_arrays", False)
    copied = Renderer(cornell, backend="cpu")
    assert isinstance(in_place._dev["positions"], np.ndarray)
    assert not isinstance(copied._dev["positions"], np.ndarray)
    units = frame_units(SMALL)[:8]
    a, b = render_frame(in_place, SMALL, units=units), render_frame(copied, SMALL, units=units)
    assert a.image().mean() > 0.0
    assert np.array_equal(bits(a.sums), bits(b.sums))
    assert np.array_equal(bits(a.aov_sums), bits(b.aov_sums))


SUBPROCESS_RENDER = """
import sys, numpy as np, msgspec
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene
from meshrender.render import Renderer, render_frame
from meshrender.settings import RenderSettings
from meshrender.units import frame_units
s = msgspec.json.decode(sys.argv[1], type=RenderSettings)
r = Renderer(compile_scene(load_scene("cornell")), backend="cpu", threads=1)
units = frame_units(s, bucket_px=9, passes_per_unit=2)[::-1]
film = render_frame(r, s, units=units)
np.save(sys.argv[2], np.concatenate([film.sums, film.aov_sums], -1))  # radiance, albedo, normal
"""


def test_another_process_with_other_buckets_gives_the_same_bits(cornell, renderer_for, tmp_path):
    out = tmp_path / "sums.npy"
    subprocess.run(
        [sys.executable, "-c", SUBPROCESS_RENDER, msgspec.json.encode(SMALL).decode(), str(out)],
        check=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    here = render_frame(renderer_for(cornell), SMALL)
    assert np.array_equal(bits(np.load(out)), bits(np.concatenate([here.sums, here.aov_sums], -1)))


@pytest.mark.parametrize("env_image", [False, True], ids=["constant", "equirect"])
def test_white_furnace(renderer_for, env_image):
    """An albedo-1 diffuse sphere in a uniform environment disappears: every pixel is the env."""
    scene = compile_scene(furnace_scene(MaterialDesc("white", base_color=(1, 1, 1)), 0.5, env_image))
    img = render_frame(renderer_for(scene), scene.settings).image()
    assert abs(img.mean() - 0.5) < 0.005
    centre = img[16:32, 16:32]  # on the sphere: many bounces
    assert abs(centre.mean() - 0.5) < 0.01
    assert np.abs(img - 0.5).max() < 0.25  # per-pixel noise at 64 spp, no outliers


def test_albedo_half_sphere_is_darker_and_conductor_conserves_energy(renderer_for):
    grey = compile_scene(furnace_scene(MaterialDesc("grey", base_color=(0.5, 0.5, 0.5)), 1.0))
    img = render_frame(renderer_for(grey), grey.settings).image()
    # a convex albedo-0.5 sphere under uniform light 1 reflects exactly 0.5
    assert abs(img[16:32, 16:32].mean() - 0.5) < 0.02
    metal = compile_scene(
        furnace_scene(
            MaterialDesc("metal", kind="conductor", base_color=(1, 1, 1), roughness=0.4), 1.0, smooth=True
        )
    )
    img = render_frame(renderer_for(metal), metal.settings).image()
    centre = img[16:32, 16:32].mean()
    # single-scattering GGX loses a little energy at this roughness, never gains any
    assert 0.9 < centre < 1.01


def test_cornell_matches_mitsuba_reference(cornell, renderer_for):
    s = cornell.settings
    assert (s.width, s.height, s.spp, s.max_depth) == (256, 256, 64, 8)
    img = render_frame(renderer_for(cornell), s).image().astype(np.float64)
    ref = read_exr(CORNELL_REF).astype(np.float64)
    mean, ref_mean = img.reshape(-1, 3).mean(0), ref.reshape(-1, 3).mean(0)
    assert np.all(np.abs(mean / ref_mean - 1) < 0.01), (mean, ref_mean)
    rmse = float(np.sqrt(np.mean((img - ref) ** 2)))
    assert rmse <= 0.025, rmse


def test_a_kernel_that_fails_to_compile_still_names_its_file_and_line(renderer_for, cornell):
    """kernels.backend trims Taichi's per-node source excerpts (a warm start's cost): an error
    in a kernel must still say where it is."""
    import taichi as ti

    renderer_for(cornell)  # the CPU backend is up, with the trimmed positions

    @ti.kernel
    def broken():  # no annotations: this file's are strings (from __future__)
        x = undefined_name_here  # noqa: F821, F841

    with pytest.raises(Exception) as err:
        broken()
    text = str(err.value)
    assert "test_render.py" in text and "line" in text and "broken" in text
    assert "undefined_name_here" in text

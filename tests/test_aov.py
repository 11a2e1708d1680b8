"""The denoiser's features (albedo, normal): what they hold, and that they split like the image."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from scenes import furnace_scene

from meshrender.film import Film, FilmError
from meshrender.render import render_frame
from meshrender.scene.compile import compile_scene
from meshrender.scene.types import MaterialDesc
from meshrender.settings import RenderSettings
from meshrender.units import AOV_ALBEDO, AOV_NORMAL, UnitResult, WorkUnit, frame_units, whole_frame_unit

SMALL = RenderSettings(width=45, height=40, spp=8, pass_spp=2, bucket_px=12, max_depth=8)
ENV = 0.5  # the furnace's uniform sky


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def test_albedo_and_normal_sums_are_the_same_bits_however_the_frame_is_split(cornell, renderer_for):
    r = renderer_for(cornell)
    whole = Film(SMALL)
    whole.add(r.render_unit(whole_frame_unit(SMALL), SMALL))
    units = frame_units(SMALL, bucket_px=7, passes_per_unit=3)
    shuffled = [units[i] for i in np.random.default_rng(3).permutation(len(units))]
    split = render_frame(r, SMALL, units=shuffled)
    assert np.array_equal(bits(whole.aov_sums), bits(split.aov_sums))
    assert np.array_equal(bits(whole.sums), bits(split.sums))
    albedo, normal = split.aov_images()
    # the box's walls: coloured albedo in [0, 1], unit normals where the camera sees a wall
    assert 0.2 < albedo.mean() < 0.9 and albedo.min() >= 0.0 and albedo.max() <= 1.0
    seen = np.linalg.norm(normal, axis=-1)
    assert np.median(seen) > 0.99
    # the red and green walls show up in the albedo: the left edge is red, the right edge green
    left, right = albedo[10:30, 5:10].reshape(-1, 3).mean(0), albedo[10:30, -10:-5].reshape(-1, 3).mean(0)
    assert left[0] - left[1] > 0.1 and right[1] - right[0] > 0.1
    # another seed moves the sample positions: the comparison above can fail
    other = render_frame(r, msgspec.structs.replace(SMALL, seed=5), units=frame_units(SMALL)[:16])
    assert not np.array_equal(bits(other.aov_sums[:12, :12]), bits(split.aov_sums[:12, :12]))


def furnace_features(renderer_for, material: MaterialDesc):
    """(albedo, normal, image) of a unit sphere of `material` under the uniform sky, 24 x 24."""
    scene = compile_scene(furnace_scene(material, env_level=ENV))
    s = msgspec.structs.replace(scene.settings, width=24, height=24, spp=8, pass_spp=8)
    film = render_frame(renderer_for(scene), s)
    albedo, normal = film.aov_images()
    return albedo, normal, film.image()


def test_a_diffuse_surface_gives_its_colour_and_a_normal_facing_the_camera(renderer_for):
    albedo, normal, _ = furnace_features(renderer_for, MaterialDesc(name="blue", base_color=(0.3, 0.6, 0.9)))
    assert np.allclose(albedo[12, 12], (0.3, 0.6, 0.9), atol=1e-5)
    assert normal[12, 12, 2] > 0.95  # the sphere's front faces the camera at +z
    # the sky around the sphere: its radiance (clamped to [0, 1]) and no normal
    assert np.allclose(albedo[0, 0], ENV, atol=1e-6) and np.all(normal[0, 0] == 0.0)


def test_a_mirror_passes_on_what_it_reflects_times_its_tint(renderer_for):
    gold = (1.0, 0.8, 0.3)
    mirror = MaterialDesc(name="mirror", kind="conductor", base_color=gold, roughness=0.0, fresnel="none")
    albedo, normal, _ = furnace_features(renderer_for, mirror)
    # every path leaves the delta mirror for the sky: the sky's albedo tinted gold, no normal
    assert np.allclose(albedo[12, 12], np.array(gold) * ENV, atol=1e-5)
    assert np.all(normal[12, 12] == 0.0)
    rough = MaterialDesc(name="rough", kind="conductor", base_color=gold, roughness=0.4, fresnel="none")
    albedo, normal, _ = furnace_features(renderer_for, rough)
    # a rough metal is not delta: its own reflectance and normal
    assert np.allclose(albedo[12, 12], gold, atol=1e-5) and normal[12, 12, 2] > 0.95


def test_clear_glass_is_seen_through(renderer_for):
    glass = MaterialDesc(name="glass", kind="dielectric", base_color=(1.0, 1.0, 1.0), roughness=0.0)
    albedo, _, image = furnace_features(renderer_for, glass)
    # smooth glass is followed to the sky behind it, reflected or refracted: the sky's albedo
    assert np.allclose(albedo[12, 12], ENV, atol=0.02)
    assert np.allclose(image[12, 12], ENV, atol=0.1)  # and the furnace holds


# ----------------------------------------------------------------------------- the film


def _result(unit: WorkUnit, aov_value: float | None) -> UnitResult:
    shape = (unit.pass_count, unit.height, unit.width)
    aov = None
    if aov_value is not None:
        aov = np.zeros((*shape, 6), np.float32)
        aov[..., AOV_ALBEDO] = aov_value
        aov[..., AOV_NORMAL] = (0.0, 0.0, 2.0)
    return UnitResult(unit=unit, sums=np.ones((*shape, 3), np.float32), sample_counts=[2] * unit.pass_count,
                      aov_sums=aov)  # fmt: skip


def test_the_film_averages_features_and_refuses_a_patchwork():
    s = RenderSettings(width=8, height=8, spp=4, pass_spp=2, bucket_px=4)
    film = Film(s)
    for u in frame_units(s):
        film.add(_result(u, 1.2))  # 2 samples per pass: albedo 0.6 per sample
    albedo, normal = film.aov_images()
    assert np.allclose(albedo, 0.6) and np.allclose(normal, (0.0, 0.0, 1.0))
    # one bucket from a peer that sent no features: the frame has none to denoise with
    mixed = Film(s)
    for i, u in enumerate(frame_units(s)):
        mixed.add(_result(u, None if i == 5 else 1.2))
    assert mixed.complete and mixed.aov_images() is None
    # a duplicate whose features differ from the first copy is caught
    with pytest.raises(FilmError, match="differs"):
        film.add(_result(frame_units(s)[0], 1.0))
    with pytest.raises(ValueError, match="AOVs"):
        UnitResult(unit=frame_units(s)[0], sums=np.ones((1, 4, 4, 3), np.float32), sample_counts=[2],
                   aov_sums=np.ones((1, 4, 4, 3), np.float32))  # fmt: skip

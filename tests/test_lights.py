"""Lights: the environment's bilinear lookup and importance sampling, point, spot and directional
lights (a sun with a radius), against closed forms and against each other.

The sampling tests run small Taichi kernels over `kernels.lights` directly; the light tests
render a diffuse plane (direct light only, max_depth 2) seen from above and compare it with
the analytic radiance albedo / pi x irradiance at each pixel's own footprint."""

# no "from __future__ import annotations": Taichi reads the kernels' annotations as objects

import math
import re

import numpy as np
import pytest
import taichi as ti
from taichi.math import vec3

from kernels.backend import init_backend
from kernels.lights import env_eval, env_sample
from meshrender.compiled import LIGHT_CDF, LIGHT_KIND, LIGHT_PICK, LIGHT_SUN
from meshrender.errors import SceneError
from meshrender.film import Film
from meshrender.render import render_frame
from meshrender.scene.compile import camera_tangents, compile_scene
from meshrender.scene.load import load_scene
from meshrender.scene.types import (
    CameraDesc,
    EnvironmentDesc,
    LightDesc,
    LoadedScene,
    MaterialDesc,
    MeshData,
    TextureImage,
)
from meshrender.settings import RenderSettings
from meshrender.units import frame_units, whole_frame_unit

ALBEDO = 0.5
BLACK = EnvironmentDesc(color=(0.0, 0.0, 0.0))

F32_1D = ti.types.ndarray(dtype=ti.f32, ndim=1)
F32_2D = ti.types.ndarray(dtype=ti.f32, ndim=2)
I32_1D = ti.types.ndarray(dtype=ti.i32, ndim=1)


@ti.kernel
def _env_eval_k(params: F32_1D, texels: F32_2D, info: I32_1D, dirs: F32_2D, out: F32_2D):
    for i in range(dirs.shape[0]):
        rad, pdf = env_eval(params, texels, info, vec3(dirs[i, 0], dirs[i, 1], dirs[i, 2]))
        out[i, 0] = rad.x
        out[i, 1] = rad.y
        out[i, 2] = rad.z
        out[i, 3] = pdf


@ti.kernel
def _env_sample_k(
    params: F32_1D, texels: F32_2D, cond: F32_1D, marg: F32_1D, info: I32_1D, us: F32_2D, out: F32_2D
):
    for i in range(us.shape[0]):
        d, rad, pdf = env_sample(params, texels, cond, marg, info, us[i, 0], us[i, 1])
        out[i, 0] = d.x
        out[i, 1] = d.y
        out[i, 2] = d.z
        out[i, 3] = pdf


# ----------------------------------------------------------------------------- scenes


def plane(half: float = 4.0) -> MeshData:
    pos = np.array([[-half, 0, -half], [half, 0, -half], [half, 0, half], [-half, 0, half]], np.float32)
    idx = np.array([[0, 2, 1], [0, 3, 2]], np.int32)  # counter-clockwise seen from +y
    mat = MaterialDesc("grey", base_color=(ALBEDO,) * 3, two_sided=True)
    return MeshData("plane", pos, idx, np.zeros(2, np.int32), [mat])


def strip(x0: float, x1: float, y: float) -> MeshData:
    """A black two-sided strip along z at height y: an occluder."""
    pos = np.array([[x0, y, -6], [x1, y, -6], [x1, y, 6], [x0, y, 6]], np.float32)
    idx = np.array([[0, 2, 1], [0, 3, 2]], np.int32)
    mat = MaterialDesc("black", base_color=(0.0, 0.0, 0.0), two_sided=True)
    return MeshData("strip", pos, idx, np.zeros(2, np.int32), [mat])


def above(centre=(0.0, 0.0), height: float = 6.0, fov_deg: float = 40.0) -> CameraDesc:
    x, z = centre
    return CameraDesc(position=(x, height, z), look_at=(x, 0.0, z), up=(0.0, 0.0, -1.0), fov_deg=fov_deg)


def lit_plane(lights, env=BLACK, camera=None, spp=8, px=32, extra=(), seed=0) -> LoadedScene:
    s = RenderSettings(width=px, height=px, spp=spp, pass_spp=spp, max_depth=2, seed=seed)
    return LoadedScene("lights", [plane(), *extra], camera or above(), env, s, lights=list(lights))


def render(scene: LoadedScene, renderer_for) -> np.ndarray:
    c = compile_scene(scene)
    return render_frame(renderer_for(c), c.settings).image().astype(np.float64)


def footprints(scene: LoadedScene, sub: int = 6) -> np.ndarray:
    """(H, W, sub*sub, 3): where a sub x sub grid of rays through each pixel meets the plane y=0,
    with the kernel's camera model (box filter over the pixel)."""
    c = compile_scene(scene)
    cam = c.arrays["camera"].astype(np.float64)
    s = scene.settings
    tan_x, tan_y = camera_tangents(c.arrays["camera"], s.width, s.height)
    pos, right, up, fwd = cam[0:3], cam[3:6], cam[6:9], cam[9:12]
    o = (np.arange(sub) + 0.5) / sub
    fx = (np.arange(s.width)[:, None] + o[None, :]).ravel()
    fy = (np.arange(s.height)[:, None] + o[None, :]).ravel()
    sx = (2.0 * fx / s.width - 1.0) * tan_x
    sy = (1.0 - 2.0 * fy / s.height) * tan_y
    d = fwd + sx[None, :, None] * right + sy[:, None, None] * up  # (H*sub, W*sub, 3)
    t = -pos[1] / d[..., 1]
    p = pos + t[..., None] * d
    p = p.reshape(s.height, sub, s.width, sub, 3).transpose(0, 2, 1, 3, 4)
    return p.reshape(s.height, s.width, sub * sub, 3)


# ----------------------------------------------------------------------------- environment


def uv_to_dir(u, v):
    """The README's mapping: u from atan2(d.x, -d.z) / 2pi, v from the +y pole."""
    phi, theta = 2 * np.pi * np.asarray(u), np.pi * np.asarray(v)
    return np.stack([np.sin(theta) * np.sin(phi), np.cos(theta), -np.sin(theta) * np.cos(phi)], -1)


def bilinear(img: np.ndarray, u, v) -> np.ndarray:
    """Texel-centred bilinear lookup of the README: u wraps, v clamps at the poles."""
    h, w = img.shape[:2]
    sx, sy = np.asarray(u) * w - 0.5, np.asarray(v) * h - 0.5
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    xa, xb = x0.astype(int) % w, (x0.astype(int) + 1) % w
    ya, yb = np.clip(y0.astype(int), 0, h - 1), np.clip(y0.astype(int) + 1, 0, h - 1)
    top = img[ya, xa] * (1 - fx) + img[ya, xb] * fx
    bottom = img[yb, xa] * (1 - fx) + img[yb, xb] * fx
    return top * (1 - fy) + bottom * fy


def sky_image(w: int = 32, h: int = 16, seed: int = 3) -> np.ndarray:
    """Random texels, a bright 'sun' texel and a black band: structure to importance-sample."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.05, 1.0, (h, w, 3)).astype(np.float32)
    img[h // 4, w // 3] = (400.0, 300.0, 200.0)
    img[h - 4 : h - 1] = 0.0  # three black rows: between their centres the density vanishes
    return img


def env_arrays(img: np.ndarray, rotation_deg: float = 0.0, color=(1.0, 1.0, 1.0)):
    tri = MeshData(
        "tri", np.eye(3, dtype=np.float32), np.array([[0, 1, 2]], np.int32), np.zeros(1, np.int32),
        [MaterialDesc("m")],
    )  # fmt: skip
    env = EnvironmentDesc(color=color, image=TextureImage("sky", img), rotation_deg=rotation_deg)
    a = compile_scene(LoadedScene("env", [tri], CameraDesc(), env)).arrays
    return a["env_params"], a["env_texels"], a["env_cond_cdf"], a["env_marg_cdf"], a["env_info"]


def env_eval_np(arrays, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    init_backend("cpu")
    params, texels, _, _, info = arrays
    out = np.zeros((len(dirs), 4), np.float32)
    _env_eval_k(params, texels, info, np.ascontiguousarray(dirs, np.float32), out)
    return out[:, :3].astype(np.float64), out[:, 3].astype(np.float64)


def env_sample_np(arrays, n: int, seed: int) -> np.ndarray:
    init_backend("cpu")
    params, texels, cond, marg, info = arrays
    us = np.random.default_rng(seed).random((n, 2), dtype=np.float32)
    out = np.zeros((n, 4), np.float32)
    _env_sample_k(params, texels, cond, marg, info, us, out)
    return out.astype(np.float64)


def test_env_lookup_is_texel_centred_bilinear_continuous_and_oriented():
    img = sky_image(16, 8)
    img[img.max(axis=2) > 100] = 1.0  # no sun here: a bounded image for the continuity bound
    arrays = env_arrays(img)
    h, w = img.shape[:2]
    # at each texel's centre, exactly that texel
    ys, xs = np.mgrid[0:h, 0:w]
    rad, _ = env_eval_np(arrays, uv_to_dir((xs.ravel() + 0.5) / w, (ys.ravel() + 0.5) / h))
    assert np.allclose(rad, img.reshape(-1, 3), rtol=1e-3, atol=1e-5)
    # the documented orientation: +x is u = 1/4, +z the image centre, -z the seam (both edges)
    axes = np.array([[1, 0, 0], [0, 0, 1], [0, 0, -1], [-1, 0, 0]], np.float64)
    rad, _ = env_eval_np(arrays, axes)
    mid = 0.5 * (img[h // 2 - 1] + img[h // 2])  # v = 1/2 lies halfway between two rows
    want = [0.5 * (mid[w // 4 - 1] + mid[w // 4]), 0.5 * (mid[w // 2 - 1] + mid[w // 2]),
            0.5 * (mid[w - 1] + mid[0]), 0.5 * (mid[3 * w // 4 - 1] + mid[3 * w // 4])]  # fmt: skip
    assert np.allclose(rad, want, rtol=1e-3)
    # continuous: around a latitude circle (through the seam) and down a meridian (pole to pole),
    # no step is larger than the steepest bilinear slope allows; nearest-texel would jump
    n = 4096
    spread = float(img.max() - img.min())
    ring, _ = env_eval_np(arrays, uv_to_dir(np.arange(n + 1) / n, np.full(n + 1, 0.37)))
    # (the poles themselves are left out: every u meets there)
    meridian, _ = env_eval_np(arrays, uv_to_dir(np.full(n, 0.61), (np.arange(n) + 0.5) / n))
    assert np.abs(np.diff(ring, axis=0)).max() <= 1.05 * spread * w / n
    assert np.abs(np.diff(meridian, axis=0)).max() <= 1.05 * spread * h / n
    assert np.abs(np.diff(ring, axis=0)).max() > 0.2 * spread * w / n  # it does vary
    # within half a texel of a pole the top row holds (v clamps)
    assert np.allclose(meridian[: n // (2 * h)], bilinear(img, 0.61, 0.5 / h), rtol=1e-3)
    # rotation_deg turns the environment about +y, right-handed
    rot = env_arrays(img, rotation_deg=90.0)
    d = uv_to_dir(np.random.default_rng(1).random(64), np.random.default_rng(2).random(64))
    turned = d @ np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], np.float64)  # R_y(90) applied to d
    assert np.allclose(env_eval_np(rot, turned)[0], env_eval_np(arrays, d)[0], rtol=1e-3, atol=1e-5)


def chi2_sf(stat: float, dof: int) -> float:
    """Upper tail of the chi-square distribution (Wilson-Hilferty; fine for dof > 30)."""
    k = float(dof)
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_env_sampling_pdf_integrates_to_one_and_matches_the_samples():
    img = sky_image()
    arrays = env_arrays(img, rotation_deg=30.0)
    nu, nv, sub = 32, 16, 12  # histogram bins over (u, v) of the rotated map, quadrature per bin
    # the pdf over a fine grid, in (u, v) of the map: p_uv = p_omega 2 pi^2 sin(theta)
    gu = (np.arange(nu * sub) + 0.5) / (nu * sub)
    gv = (np.arange(nv * sub) + 0.5) / (nv * sub)
    uu, vv = np.meshgrid(gu, gv)
    local = uv_to_dir(uu.ravel(), vv.ravel())
    c, s = math.cos(math.radians(30.0)), math.sin(math.radians(30.0))
    to_world = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # R_y(30): the map's local -> world
    _, pdf = env_eval_np(arrays, local @ to_world.T)
    p_uv = (pdf * 2 * np.pi**2 * np.sin(np.pi * vv.ravel())).reshape(nv * sub, nu * sub)
    assert abs(p_uv.mean() - 1.0) < 2e-3  # integrates to 1 over the sphere
    expected_p = p_uv.reshape(nv, sub, nu, sub).mean(axis=(1, 3)) / (nu * nv)
    black = len(expected_p) - 3  # the bin between the black rows' centres: never sampled
    assert expected_p[black].max() < 1e-6 * expected_p.max()
    # samples: histogram over the same bins, in the map's own (u, v)
    n = 400_000
    out = env_sample_np(arrays, n, seed=11)
    d_local = out[:, :3] @ to_world  # world -> local
    assert np.allclose(np.linalg.norm(out[:, :3], axis=1), 1.0, atol=1e-5)
    su = (np.arctan2(d_local[:, 0], -d_local[:, 2]) / (2 * np.pi)) % 1.0
    sv = np.arccos(np.clip(d_local[:, 1], -1, 1)) / np.pi
    hist = np.histogram2d(sv, su, bins=[nv, nu], range=[[0, 1], [0, 1]])[0]
    assert hist[black].sum() == 0
    # each sample's pdf is env_eval's at its direction: what MIS uses for an escaping ray
    _, pdf_at = env_eval_np(arrays, out[:, :3])
    assert np.allclose(out[:, 3], pdf_at, rtol=1e-5)

    def p_value(expected_prob: np.ndarray) -> float:
        exp = expected_prob.ravel() * n
        obs = hist.ravel()
        keep = exp >= 5  # pool the tiny bins (Mitsuba's chi2 test does the same)
        e = np.append(exp[keep], exp[~keep].sum())
        o = np.append(obs[keep], obs[~keep].sum())
        stat = float(np.sum((o - e) ** 2 / np.maximum(e, 1e-12)))
        return chi2_sf(stat, len(e) - 1)

    assert p_value(expected_p) > 1e-3
    # the test has power: a piecewise-constant (nearest-texel) density, one texel per bin, fails
    sin_rows = np.sin((np.arange(nv) + 0.5) * np.pi / nv)[:, None]
    nearest = (img.astype(np.float64) @ [0.2126, 0.7152, 0.0722]) * sin_rows
    assert p_value(nearest / nearest.sum()) < 1e-6


def test_image_environment_matches_a_constant_one_of_the_same_irradiance(renderer_for):
    """Importance-sampled image vs a constant sky with the same irradiance on the plane: the
    same expectation, both equal to albedo / pi x E."""
    img = sky_image(64, 32, seed=5)
    # E = integral over the upper hemisphere of L cos(theta), from the documented lookup
    n = 1024
    u, v = (np.arange(2 * n) + 0.5) / (2 * n), (np.arange(n // 2) + 0.5) / n  # v < 1/2: upper
    uu, vv = np.meshgrid(u, v)
    radiance = bilinear(img, uu, vv)
    weight = np.cos(np.pi * vv) * np.sin(np.pi * vv) * (2 * np.pi**2) / (2 * n * n)
    irradiance = (radiance * weight[..., None]).sum(axis=(0, 1))
    want = ALBEDO / np.pi * irradiance
    image_env = EnvironmentDesc(color=(1.0, 1.0, 1.0), image=TextureImage("sky", img), rotation_deg=40.0)
    constant = EnvironmentDesc(color=tuple(float(e) for e in irradiance / np.pi))
    got_image = render(lit_plane([], env=image_env, spp=16), renderer_for).reshape(-1, 3).mean(0)
    got_const = render(lit_plane([], env=constant, spp=16), renderer_for).reshape(-1, 3).mean(0)
    assert np.all(np.abs(got_const / want - 1) < 0.01), (got_const, want)
    assert np.all(np.abs(got_image / want - 1) < 0.015), (got_image, want)


# ----------------------------------------------------------------------------- punctual lights


def test_point_light_over_a_plane_is_intensity_cos_over_r2_times_albedo_over_pi(renderer_for):
    light = LightDesc("point", position=(0.7, 2.0, -0.4), intensity=(10.0, 5.0, 2.0))
    scene = lit_plane([light], spp=32)
    img = render(scene, renderer_for)
    p = footprints(scene)
    to_l = np.asarray(light.position) - p
    r2 = (to_l**2).sum(-1)
    cos = to_l[..., 1] / np.sqrt(r2)
    want = (cos / r2).mean(-1)[..., None] * np.asarray(light.intensity) * ALBEDO / np.pi
    assert np.abs(img / want - 1).max() < 0.03  # per pixel (jitter inside the pixel is the only noise)
    assert np.all(np.abs(img.mean((0, 1)) / want.mean((0, 1)) - 1) < 0.003)


def test_directional_light_gives_irradiance_cos_times_albedo_over_pi(renderer_for):
    d = np.array([1.0, -2.0, 0.5])
    light = LightDesc("directional", direction=tuple(d), intensity=(3.0, 2.0, 1.0))
    img = render(lit_plane([light]), renderer_for)
    cos = 2.0 / np.linalg.norm(d)
    want = np.asarray(light.intensity) * cos * ALBEDO / np.pi
    assert np.allclose(img, want, rtol=1e-4)  # every pixel: a delta light has no noise
    # from below the plane: the lit side faces away, nothing arrives
    under = LightDesc("directional", direction=(0.0, 1.0, 0.0), intensity=(3.0, 2.0, 1.0))
    assert render(lit_plane([under]), renderer_for).max() == 0.0


def test_spot_light_falls_off_linearly_in_angle_from_beam_to_cutoff(renderer_for):
    h = 2.0
    light = LightDesc(
        "spot", position=(0.0, h, 0.0), direction=(0.0, -1.0, 0.0), intensity=(40.0,) * 3,
        cutoff_deg=35.0, beam_width_deg=20.0,
    )  # fmt: skip
    scene = lit_plane([light], camera=above(fov_deg=60.0), px=48, spp=32)
    img = render(scene, renderer_for)[..., 0]
    p = footprints(scene)
    to_l = np.asarray(light.position) - p
    r = np.sqrt((to_l**2).sum(-1))
    angle = np.degrees(np.arccos(to_l[..., 1] / r))  # from the spot's axis (straight down)
    fall = np.clip((35.0 - angle) / (35.0 - 20.0), 0.0, 1.0)
    want = (40.0 * fall * (to_l[..., 1] / r) / r**2).mean(-1) * ALBEDO / np.pi
    assert np.abs(img - want).max() < 0.06 * want.max()  # per pixel: jitter across steep slopes
    centre = angle.mean(-1) < 15.0
    ring = (angle.min(-1) > 20.0) & (angle.max(-1) < 35.0)  # pixels inside the transition
    outside = angle.min(-1) > 35.0
    assert centre.sum() > 20 and ring.sum() > 100 and outside.sum() > 100
    assert np.allclose(img[centre], want[centre], rtol=0.01)
    # the profile across the transition, in 3-degree rings: linear in angle (a smoothstep would
    # be 40% low a quarter of the way in)
    ring_angle = angle.mean(-1)[ring]
    for lo in range(20, 35, 3):
        band = (ring_angle >= lo) & (ring_angle < lo + 3)
        assert band.sum() > 10
        assert abs(img[ring][band].sum() / want[ring][band].sum() - 1) < 0.02, lo
    assert img[outside].max() == 0.0


def test_sun_radius_keeps_the_mean_irradiance_and_softens_the_shadow_edge(renderer_for):
    sharp = LightDesc("directional", direction=(1.0, -1.0, 0.0), intensity=(2.0,) * 3)
    soft = LightDesc("directional", direction=(1.0, -1.0, 0.0), intensity=(2.0,) * 3, angular_radius_deg=5.0)
    # an open plane: E cos(45) either way, the soft sun within noise
    want = 2.0 * math.cos(math.radians(45.0)) * ALBEDO / np.pi
    open_sharp = render(lit_plane([sharp]), renderer_for)
    open_soft = render(lit_plane([soft], spp=16), renderer_for)
    assert np.allclose(open_sharp, want, rtol=1e-4)
    assert abs(open_soft.mean() / want - 1) < 0.005
    # a black strip at height 1 over x in [-0.25, 0.25] casts its shadow onto x in [0.75, 1.25]
    cam = above(centre=(1.0, 0.0), fov_deg=2 * math.degrees(math.atan(0.5 / 6.0)))
    occluder = [strip(-0.25, 0.25, 1.0)]
    rows = []
    for light in (sharp, soft):
        img = render(lit_plane([light], camera=cam, px=64, spp=32, extra=occluder), renderer_for)
        rows.append(img[..., 0].mean(axis=0) / want)  # along x, averaged over z (the strip's axis)
    sharp_x, soft_x = rows
    partial = lambda row: int(np.count_nonzero((row > 0.1) & (row < 0.9)))  # noqa: E731
    assert sharp_x.min() < 1e-6 and sharp_x.max() > 0.999
    assert partial(sharp_x) <= 2  # only the two pixels the edges cross
    # penumbra: tan(45 + 5) - tan(45 - 5) = 0.353 of the plane per edge, 64 px per unit here;
    # 10% to 90% of a disc's occlusion by an edge spans 0.687 of it
    expected = 2 * 0.687 * 0.353 * 64
    assert 0.8 * expected < partial(soft_x) < 1.2 * expected, (partial(soft_x), expected)
    assert soft_x.min() < 1e-6  # the umbra stays dark: 0.5 - 0.353 of it is left


def test_light_pick_is_uniform_over_emitters_and_splits_stay_bit_identical(renderer_for):
    """Every kind of light at once: each emitter is picked alike (as Mitsuba 3 does), one that
    gives no light is never picked, and a frame split into buckets and passes gives the same
    bits as one unit."""
    lights = [
        LightDesc("point", position=(1.0, 2.0, 0.0), intensity=(5.0,) * 3),
        LightDesc("spot", position=(-1, 2, 0), intensity=(20.0,) * 3, cutoff_deg=30.0, beam_width_deg=30.0),
        LightDesc("directional", direction=(0.0, -1.0, 1.0), intensity=(1.0,) * 3),
        LightDesc("directional", direction=(1.0, -1.0, 0.0), intensity=(1.0,) * 3, angular_radius_deg=2.0),
        LightDesc("point", position=(0.0, 1.0, 0.0), intensity=(0.0,) * 3),  # dark: never picked
    ]
    env = EnvironmentDesc(color=(0.1, 0.1, 0.1))
    scene = lit_plane(lights, env=env)
    c = compile_scene(scene)
    table, pick = c.arrays["lights"], c.arrays["light_pick"]
    assert table[0, LIGHT_KIND] == LIGHT_SUN  # the sun with a radius comes first
    # the environment and 4 lights that shine, no emissive triangles
    assert pick[0] == pytest.approx(1 / 5) and pick[1] == 0.0
    assert sorted(table[:, LIGHT_PICK].tolist()) == pytest.approx([0.0] + [1 / 5] * 4)
    assert table[-1, LIGHT_CDF] == 1.0
    # listing the lights in another order compiles to the same scene
    assert compile_scene(lit_plane(lights[::-1], env=env)).equals(c)
    s = RenderSettings(width=20, height=18, spp=8, pass_spp=2, bucket_px=8, max_depth=3)
    r = renderer_for(c)
    whole = Film(s)
    whole.add(r.render_unit(whole_frame_unit(s), s))
    split = render_frame(r, s, units=frame_units(s)[::-1])
    assert np.array_equal(whole.sums.view(np.uint32), split.sums.view(np.uint32))
    assert whole.image().mean() > 0.01


# ----------------------------------------------------------------------------- scene files


def scene_file(tmp_path, text: str):
    (tmp_path / "tri.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 0 -1\nf 1 2 3\n")
    p = tmp_path / "s.toml"
    p.write_text('[environment]\ncolor = [0, 0, 0]\n[[meshes]]\nfile = "tri.obj"\n' + text)
    return p


def test_scene_file_light_tables(tmp_path):
    text = """
[[light]]
kind = "point"
position = [0, 3, 0]
intensity = 50
[[light]]
kind = "spot"
position = [0, 4, 0]
look_at = [0, 0, 0]
intensity = [1, 2, 3]
cutoff_deg = 30
[[light]]
kind = "directional"
direction = [0, -2, 0]
irradiance = 3
angular_radius_deg = 0.27
"""
    s = load_scene(scene_file(tmp_path, text))
    point, spot, sun = s.lights
    assert (point.kind, point.position, point.intensity) == ("point", (0, 3, 0), (50, 50, 50))
    assert spot.direction == pytest.approx((0, -1, 0)) and spot.intensity == (1, 2, 3)
    assert (spot.cutoff_deg, spot.beam_width_deg) == (30, 22.5)  # Mitsuba's default beam: 3/4
    assert sun.direction == pytest.approx((0, -1, 0)) and sun.intensity == (3, 3, 3)
    assert sun.angular_radius_deg == 0.27
    # the sun's disc: radiance E / (pi sin^2 r), so the irradiance stays E
    row = compile_scene(s).arrays["lights"][0]
    assert row[7] == pytest.approx(3 / (math.pi * math.sin(math.radians(0.27)) ** 2), rel=1e-5)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('kind = "point"\n', "light[0] (point): missing required key position"),
        ('kind = "point"\nposition = [0, 1, 0]\ncutoff_deg = 5\n', "`cutoff_deg` is for spot lights"),
        ('kind = "directional"\ndirection = [0, -1, 0]\nintensity = 2\n', "`intensity` is for point"),
        ('kind = "spot"\nposition = [0, 1, 0]\nlook_at = [0, 1, 0]\n', "look_at - position is the zero"),
        (
            'kind = "spot"\nposition = [0, 1, 0]\ndirection = [0, -1, 0]\ncutoff_deg = 10\n'
            "beam_width_deg = 12",
            "beam_width_deg 12.0 is wider than cutoff_deg 10.0",
        ),
        ('kind = "directional"\ndirection = [0, -1, 0]\nangular_radius_deg = 95\n', "angular_radius_deg"),
        ('kind = "directional"\nangular_radius_deg = 1\n', "missing required key direction"),
        ('kind = "laser"\n', "light[0].kind"),
        ('kind = "point"\nposition = [0, 1, 0]\nintensity = [1, 2]\n', "a number >= 0 or [r, g, b]"),
        ('kind = "point"\nposition = [0, 1, 0]\nintensity = -1\n', "a number >= 0 or [r, g, b]"),
        ('kind = "point"\nposition = [0, 1, 0]\ncolour = 1\n', "unknown key `colour`"),
    ],
)
def test_scene_file_light_errors_name_the_problem(tmp_path, text, problem):
    with pytest.raises(SceneError, match=re.escape(problem)):
        load_scene(scene_file(tmp_path, "[[light]]\n" + text))

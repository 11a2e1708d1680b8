"""Lights for the path tracer: the environment, point, spot and directional lights, and the MIS
helpers next-event estimation shares with them.

How it works
  * The environment is a constant radiance, or an equirect image times that colour. Mapping
    (Mitsuba 3's orientation): +y is up; u = atan2(d.x, -d.z) / 2pi wrapped into [0, 1), so the
    image's left and right edges meet looking down -z and its centre looks down +z, u growing
    towards +x first; v = acos(d.y) / pi, 0 at the +y pole (the top row). `rotation_deg` turns
    the whole environment about +y, right-handed (Mitsuba's `<rotate y="1"/>` on to_world).
  * Texel-centred bilinear lookup: texel (x, y) is the value at u = (x + 0.5) / W,
    v = (y + 0.5) / H, the centre of the cell of the sphere it was made from; u wraps (the seam
    interpolates between the last and first columns), v clamps (within half a texel of a pole
    the top or bottom row holds). Texel-centred because that is how equirect images are made and
    stored (each pixel integrates its cell, as a camera or stitcher writes it) and how the
    base-colour textures here are read; align-corners would make the top row a single point,
    the pole, and stretch the image by H / (H - 1). Mitsuba 3 is texel-centred in u and
    align-corners in v, so a tiny map differs from it by up to half a texel in latitude.
  * Importance sampling of the image draws (u, v) from a continuous 2D density f that is the
    bilinear interpolation, on the same texel-centre grid, of w[y, x] = luminance x sin(theta_y),
    with two more node rows of 0 at the poles (so f falls linearly to 0 there, like sin(theta)).
    Marginal over rows, conditional over columns: the band between two node rows is chosen by
    `env_marg_cdf` (each band's integral of f), v inside it by inverting the band's linear
    marginal (a quadratic), then the column cell by the two rows' running sums
    (`env_cond_cdf`) blended at that v, and u inside the cell by inverting its linear profile.
    So the density of a sampled direction is exactly pdf = W f(u, v) / Z / (2 pi^2 sin(theta)),
    which `env_eval` returns for any direction: the same number MIS uses for a BSDF-sampled ray
    that escapes. Z (the integral of f) is env_params[4].
  * Point and spot lights and a sun of radius 0 are delta lights: only next-event estimation
    reaches them (`light_delta` = 1, no MIS weight); a ray never hits them. A spot follows
    Mitsuba: full intensity inside `beam_width`, falling linearly in angle to 0 at `cutoff`.
  * A sun with angular radius r > 0 is a disc of directions of uniform radiance
    L = E / (pi sin^2 r): the irradiance it gives a surface facing it is the integral of
    L cos(theta) over the cap, L 2 pi (sin^2 r) / 2 = E, so the mean light on an open plane does
    not change with r. NEE samples the cap uniformly (pdf 1 / (2 pi (1 - cos r))); a BSDF-sampled
    ray inside the cap sees L, weighted by the power heuristic like the environment.
"""

import math  # no "from __future__ import annotations": Taichi reads the annotations as objects

import taichi as ti
from taichi.math import vec2, vec3

from kernels.trig import sincos_turn
from meshrender.compiled import (
    LIGHT_ANGLE,
    LIGHT_CDF,
    LIGHT_COS_INNER,
    LIGHT_COS_OUTER,
    LIGHT_DIR,
    LIGHT_INV_TRANSITION,
    LIGHT_KIND,
    LIGHT_PICK,
    LIGHT_POS,
    LIGHT_RGB,
    LIGHT_SPOT,
    LIGHT_SUN,
)

PI = math.pi
INV_PI = 1.0 / math.pi
LUM_R, LUM_G, LUM_B = 0.2126, 0.7152, 0.0722  # Rec. 709, as scene.compile weights the image
SIN_THETA_MIN = 1e-7  # below this a direction is on a pole, where the equirect density is 0


@ti.func
def power_heuristic(a: ti.f32, b: ti.f32) -> ti.f32:
    a2 = a * a
    b2 = b * b
    res = 1.0
    if a2 + b2 > 0.0:
        res = a2 / (a2 + b2)
    return res


@ti.func
def cdf_search(cdf: ti.template(), n: ti.i32, u: ti.f32) -> ti.i32:
    """First index i with u < cdf[i] (inclusive CDF, last entry 1)."""
    lo = 0
    hi = n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if u < cdf[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@ti.func
def sample_linear(a: ti.f32, b: ti.f32, u: ti.f32) -> ti.f32:
    """t in [0, 1] with density proportional to (1 - t) a + t b, by inverting its CDF (the
    quadratic's root in the form that stays accurate when a and b are nearly equal)."""
    t = u
    if a + b > 0.0:
        den = a + ti.sqrt(ti.max(0.0, a * a + u * (b * b - a * a)))
        t = 0.0
        if den > 0.0:
            t = ti.min(1.0, ti.max(0.0, u * (a + b) / den))
    return t


@ti.func
def frame_around(n: vec3):
    """Two unit vectors completing unit n to an orthonormal basis (Duff et al. 2017)."""
    sign = 1.0 if n.z >= 0.0 else -1.0
    a = -1.0 / (sign + n.z)
    b = n.x * n.y * a
    t = vec3(1.0 + sign * n.x * n.x * a, sign * b, -sign * n.x)
    s = vec3(b, sign + n.y * n.y * a, -n.y)
    return t, s


# ----------------------------------------------------------------------------- environment


@ti.func
def env_dir_to_uv(d: vec3, rot: ti.f32) -> vec2:
    """The equirect (u, v) of direction d; see the module's opening comment."""
    c = ti.cos(rot)
    s = ti.sin(rot)
    dx = c * d.x - s * d.z
    dz = s * d.x + c * d.z
    u = ti.atan2(dx, -dz) * (0.5 * INV_PI)
    v = ti.acos(ti.min(1.0, ti.max(-1.0, d.y))) * INV_PI
    return vec2(u - ti.floor(u), ti.min(v, 0.99999994))


@ti.func
def env_uv_to_dir(uv: vec2, rot: ti.f32) -> vec3:
    phi = uv.x * 2.0 * PI
    theta = uv.y * PI
    st = ti.sin(theta)
    dx = st * ti.sin(phi)
    dz = -st * ti.cos(phi)
    c = ti.cos(rot)
    s = ti.sin(rot)
    return vec3(c * dx + s * dz, ti.cos(theta), -s * dx + c * dz)


@ti.func
def env_texel(env_texels: ti.template(), w: ti.i32, x: ti.i32, y: ti.i32) -> vec3:
    i = y * w + x
    return vec3(env_texels[i, 0], env_texels[i, 1], env_texels[i, 2])


@ti.func
def env_lookup(env_texels: ti.template(), w: ti.i32, h: ti.i32, uv: vec2) -> vec3:
    """Texel-centred bilinear lookup, u wrapping, v clamped at the poles."""
    sx = uv.x * w - 0.5
    sy = uv.y * h - 0.5
    fx0 = ti.floor(sx)
    fy0 = ti.floor(sy)
    fx = sx - fx0
    fy = sy - fy0
    x0 = (ti.i32(fx0) % w + w) % w
    x1 = (x0 + 1) % w
    y0 = ti.max(0, ti.min(ti.i32(fy0), h - 1))
    y1 = ti.max(0, ti.min(ti.i32(fy0) + 1, h - 1))
    c00 = env_texel(env_texels, w, x0, y0)
    c10 = env_texel(env_texels, w, x1, y0)
    c01 = env_texel(env_texels, w, x0, y1)
    c11 = env_texel(env_texels, w, x1, y1)
    return (c00 * (1.0 - fx) + c10 * fx) * (1.0 - fy) + (c01 * (1.0 - fx) + c11 * fx) * fy


@ti.func
def env_node_weight(env_texels: ti.template(), w: ti.i32, h: ti.i32, j: ti.i32, x: ti.i32) -> ti.f32:
    """The sampling density's value at node row j (0: the +y pole, 1..H: texel rows, H + 1: the
    -y pole), column x: luminance x sin(theta) of the texel, 0 on the poles."""
    res = 0.0
    if j >= 1 and j <= h:
        c = env_texel(env_texels, w, x, j - 1)
        res = (LUM_R * c.x + LUM_G * c.y + LUM_B * c.z) * ti.sin((j - 0.5) * PI / h)
    return res


@ti.func
def env_node_total(env_cond: ti.template(), w: ti.i32, h: ti.i32, j: ti.i32) -> ti.f32:
    """The integral over columns of the density along node row j."""
    res = 0.0
    if j >= 1 and j <= h:
        res = env_cond[(j - 1) * w + w - 1]
    return res


@ti.func
def env_node_cum(env_cond: ti.template(), w: ti.i32, h: ti.i32, j: ti.i32, x: ti.i32) -> ti.f32:
    """Running sum of node row j's cells 0..x (0 for x < 0 and on the poles)."""
    res = 0.0
    if j >= 1 and j <= h and x >= 0:
        res = env_cond[(j - 1) * w + x]
    return res


@ti.func
def env_band_of(v: ti.f32, h: ti.i32):
    """The latitude band (between node rows k and k + 1) holding v, and v's place in it."""
    k = 0
    a = 0.0
    half = 0.5 / h
    if v < half:
        a = v / half
    elif v >= 1.0 - half:
        k = h
        a = (v - (1.0 - half)) / half
    else:
        t = v * h + 0.5
        k = ti.min(ti.i32(ti.floor(t)), h - 1)
        a = t - k
    return k, ti.min(1.0, ti.max(0.0, a))


@ti.func
def env_band_weight(env_texels: ti.template(), w: ti.i32, h: ti.i32, k: ti.i32, a: ti.f32, x: ti.i32):
    """The density at column x, a of the way from node row k to node row k + 1."""
    r0 = env_node_weight(env_texels, w, h, k, x)
    r1 = env_node_weight(env_texels, w, h, k + 1, x)
    return (1.0 - a) * r0 + a * r1


@ti.func
def env_band_cum(env_cond: ti.template(), w: ti.i32, h: ti.i32, k: ti.i32, a: ti.f32, x: ti.i32):
    """The running sum over cells 0..x, a of the way from node row k to node row k + 1."""
    c0 = env_node_cum(env_cond, w, h, k, x)
    c1 = env_node_cum(env_cond, w, h, k + 1, x)
    return (1.0 - a) * c0 + a * c1


@ti.func
def env_density(env_texels: ti.template(), w: ti.i32, h: ti.i32, uv: vec2) -> ti.f32:
    """f(u, v): the bilinear interpolation of the node weights (unnormalised)."""
    k, a = env_band_of(uv.y, h)
    sx = uv.x * w - 0.5
    fx0 = ti.floor(sx)
    fx = sx - fx0
    x0 = (ti.i32(fx0) % w + w) % w
    x1 = (x0 + 1) % w
    e0 = env_band_weight(env_texels, w, h, k, a, x0)
    e1 = env_band_weight(env_texels, w, h, k, a, x1)
    return e0 * (1.0 - fx) + e1 * fx


@ti.func
def env_eval(env_params: ti.template(), env_texels: ti.template(), env_info: ti.template(), d: vec3):
    """Radiance arriving from direction d and the solid-angle pdf of `env_sample` choosing d."""
    scale = vec3(env_params[0], env_params[1], env_params[2])
    rad = scale
    pdf = 0.25 * INV_PI
    if env_info[2] != 0:
        w = env_info[0]
        h = env_info[1]
        uv = env_dir_to_uv(d, env_params[3] * (PI / 180.0))
        rad = scale * env_lookup(env_texels, w, h, uv)
        sin_t = ti.sqrt(d.x * d.x + d.z * d.z)  # rotation about y keeps it; exact near the poles
        pdf = 0.0
        z = env_params[4]
        if sin_t > SIN_THETA_MIN and z > 0.0:
            pdf = env_density(env_texels, w, h, uv) * w / (z * 2.0 * PI * PI * sin_t)
    return rad, pdf


@ti.func
def env_sample(
    env_params: ti.template(),
    env_texels: ti.template(),
    env_cond: ti.template(),
    env_marg: ti.template(),
    env_info: ti.template(),
    u1: ti.f32,
    u2: ti.f32,
):
    """A direction towards the environment (image: by the density above; constant: uniform over
    the sphere), its radiance and its solid-angle pdf (env_eval's, so MIS sees one number)."""
    d = vec3(0.0, 1.0, 0.0)
    if env_info[2] != 0:
        w = env_info[0]
        h = env_info[1]
        # the band: a discrete pick, then v inside it along the band's linear marginal
        k = cdf_search(env_marg, h + 1, u1)
        lo = 0.0
        if k > 0:
            lo = env_marg[k - 1]
        hi = env_marg[k]
        xi = 0.0
        if hi > lo:
            xi = ti.min(1.0, ti.max(0.0, (u1 - lo) / (hi - lo)))
        m0 = env_node_total(env_cond, w, h, k)
        m1 = env_node_total(env_cond, w, h, k + 1)
        a = sample_linear(m0, m1, xi)
        v0 = 0.0
        dv = 0.5 / h
        if k > 0:
            v0 = (k - 0.5) / h
            if k < h:
                dv = 1.0 / h
        v = v0 + a * dv
        # the column cell: the two node rows' running sums blended at a
        target = u2 * ((1.0 - a) * m0 + a * m1)
        lo_x = 0
        hi_x = w - 1
        while lo_x < hi_x:
            mid = (lo_x + hi_x) // 2
            if target < env_band_cum(env_cond, w, h, k, a, mid):
                hi_x = mid
            else:
                lo_x = mid + 1
        x = lo_x
        c_prev = env_band_cum(env_cond, w, h, k, a, x - 1)
        c_here = env_band_cum(env_cond, w, h, k, a, x)
        xi2 = 0.5
        if c_here > c_prev:
            xi2 = ti.min(1.0, ti.max(0.0, (target - c_prev) / (c_here - c_prev)))
        e0 = env_band_weight(env_texels, w, h, k, a, x)
        e1 = env_band_weight(env_texels, w, h, k, a, (x + 1) % w)
        t = sample_linear(e0, e1, xi2)
        u = (x + t + 0.5) / w
        u = u - ti.floor(u)
        d = env_uv_to_dir(vec2(u, v), env_params[3] * (PI / 180.0))
    else:
        z = 1.0 - 2.0 * u1
        r = ti.sqrt(ti.max(0.0, 1.0 - z * z))
        cos_phi, sin_phi = sincos_turn(u2)
        d = vec3(r * cos_phi, z, r * sin_phi)
    rad, pdf = env_eval(env_params, env_texels, env_info, d)
    return d, rad, pdf


# ----------------------------------------------------------------------------- punctual lights


@ti.func
def light_search(lights: ti.template(), n: ti.i32, u: ti.f32) -> ti.i32:
    """The light whose pick interval holds u: first k with u < lights[k, LIGHT_CDF]."""
    lo = 0
    hi = n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if u < lights[mid, LIGHT_CDF]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@ti.func
def light_vec(lights: ti.template(), k: ti.i32, at: ti.template()) -> vec3:
    return vec3(lights[k, at], lights[k, at + 1], lights[k, at + 2])


@ti.func
def spot_falloff(lights: ti.template(), k: ti.i32, cos_t: ti.f32) -> ti.f32:
    """Mitsuba's spot profile: 1 inside the beam, linear in angle to 0 at the cutoff."""
    res = 0.0
    if cos_t > lights[k, LIGHT_COS_OUTER]:
        res = 1.0
        if cos_t < lights[k, LIGHT_COS_INNER]:
            ang = ti.acos(ti.min(1.0, ti.max(-1.0, cos_t)))
            res = ti.min(1.0, ti.max(0.0, (lights[k, LIGHT_ANGLE] - ang) * lights[k, LIGHT_INV_TRANSITION]))
    return res


@ti.func
def punctual_sample(lights: ti.template(), k: ti.i32, p: vec3, u1: ti.f32, u2: ti.f32):
    """Next-event sample of light k from point p: (wi, li, pdf, dist, q_end, delta). li / pdf
    times f cos is the estimate; pdf includes the pick; dist = inf for a directional light."""
    kind = ti.i32(lights[k, LIGHT_KIND])
    pick = lights[k, LIGHT_PICK]
    rgb = light_vec(lights, k, LIGHT_RGB)
    wi = vec3(0.0, 1.0, 0.0)
    li = vec3(0.0)
    pdf = 0.0
    dist = ti.math.inf
    q_end = vec3(0.0)
    delta = 1
    if kind == LIGHT_SUN:
        to_sun = -light_vec(lights, k, LIGHT_DIR)
        one_minus_cos = lights[k, LIGHT_ANGLE]
        if one_minus_cos > 0.0:
            # uniform on the cap of directions; sin from 1 - cos without cancellation
            dc = u1 * one_minus_cos
            cos_t = 1.0 - dc
            sin_t = ti.sqrt(ti.max(0.0, dc * (2.0 - dc)))
            cos_phi, sin_phi = sincos_turn(u2)
            t_axis, s_axis = frame_around(to_sun)
            wi = (t_axis * cos_phi + s_axis * sin_phi) * sin_t + to_sun * cos_t
            li = rgb
            pdf = pick / (2.0 * PI * one_minus_cos)
            delta = 0
        else:
            wi = to_sun
            li = rgb
            pdf = pick
    else:
        pos = light_vec(lights, k, LIGHT_POS)
        to_l = pos - p
        d2 = to_l.norm_sqr()
        if d2 > 0.0:
            dist = ti.sqrt(d2)
            wi = to_l / dist
            fall = 1.0
            if kind == LIGHT_SPOT:
                fall = spot_falloff(lights, k, -wi.dot(light_vec(lights, k, LIGHT_DIR)))
            li = rgb * (fall / d2)
            pdf = pick
            q_end = pos
    return wi, li, pdf, dist, q_end, delta


@ti.func
def suns_eval(lights: ti.template(), n_suns: ti.i32, d: vec3, prev_pdf: ti.f32, weighted: ti.i32) -> vec3:
    """Radiance of the suns (directional lights with a radius, the first n_suns rows) seen along
    d, each MIS-weighted against the BSDF sample of pdf prev_pdf when `weighted`."""
    res = vec3(0.0)
    for k in range(n_suns):
        to_sun = -light_vec(lights, k, LIGHT_DIR)
        one_minus_cos = lights[k, LIGHT_ANGLE]
        # inside the cap: sin^2 of the angle to the axis below sin^2 r (exact for tiny r,
        # where cosines near 1 would lose the cap to float32 rounding)
        if d.dot(to_sun) > 0.0 and d.cross(to_sun).norm_sqr() < one_minus_cos * (2.0 - one_minus_cos):
            wgt = 1.0
            if weighted != 0:
                wgt = power_heuristic(prev_pdf, lights[k, LIGHT_PICK] / (2.0 * PI * one_minus_cos))
            res += light_vec(lights, k, LIGHT_RGB) * wgt
    return res

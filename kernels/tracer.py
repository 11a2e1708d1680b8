"""The path tracer: one Taichi kernel that renders a sample range for every pixel of a rectangle.

How it works
  * Each pixel of the rectangle is one thread; it sums the radiance of samples s0..s1-1 in
    sample order into a float32 sum. Nothing a thread computes depends on the rectangle it was
    launched with, so any split of the frame gives the same per-pixel sums, bit for bit.
  * Random numbers are a counter-based hash: key = H(seed, frame, pixel, sample), and the value
    for dimension d is H(key + d * golden). Dimensions are laid out per bounce (DIM_* below), so a
    sample's path never depends on other samples or on thread scheduling.
  * Triangles are stored in BVH leaf order; traversal is a stack walk over the flattened nodes
    (see meshrender.compiled for the layout), nearer child first.
  * Materials: two-sided diffuse (Lambert), rough conductor (GGX, visible-normal sampling,
    Schlick Fresnel with F0 = base colour), emission on any material (one- or two-sided).
  * Next-event estimation picks the environment or an emissive triangle (by power), and both
    light samples and BSDF samples are weighted by the power heuristic (MIS).
  * Russian roulette after `rr_depth` bounces; at most `max_depth` path segments (Mitsuba's
    convention: max_depth 1 shows emitters only, 2 adds direct light).

All scene data arrive as ndarray arguments, so the kernel compiles once per process (and is
cached on disk by Taichi's offline cache) whatever the scene.
"""

import math  # no "from __future__ import annotations": Taichi reads the annotations as objects

import taichi as ti
from taichi.math import vec2, vec3

from meshrender.compiled import (
    CAM_FOCUS_DIST,
    CAM_FORWARD,
    CAM_LENS_RADIUS,
    CAM_POS,
    CAM_RIGHT,
    CAM_UP,
    KIND_CONDUCTOR,
    MAT_BASE,
    MAT_BASE_TEX,
    MAT_EMIT,
    MAT_EMIT_TWO_SIDED,
    MAT_KIND,
    MAT_ROUGHNESS,
)

PI = math.pi
INV_PI = 1.0 / math.pi
STACK_DEPTH = 64  # BVH depth bound: the binned-SAH builder stays far below this for any real mesh
RAY_EPS = 1e-4  # origin offset along the normal, relative to the hit point's magnitude (>= 1)
ALPHA_MIN = 1e-3  # GGX alpha floor: keeps the microfacet pdf finite for mirror-like conductors
SHADOW_SLACK = 1e-5  # shadow segments stop this fraction short of the (already lifted) light point
RR_Q_MAX = 0.95  # Russian roulette survival cap, as Mitsuba: bounds the path length in bright scenes

# Sample dimensions: camera first, then a fixed block per bounce.
DIM_PIXEL = 0  # 0, 1: position inside the pixel (box filter)
DIM_LENS = 2  # 2, 3: thin lens
DIM_BOUNCE = 4
DIM_LIGHT_PICK = 0  # which light
DIM_LIGHT_POS = 1  # 1, 2: where on it
DIM_BSDF = 3  # 3, 4: BSDF direction
DIM_RR = 5
DIMS_PER_BOUNCE = 6

Hit = ti.types.struct(t=ti.f32, u=ti.f32, v=ti.f32, tri=ti.i32)

F32_2D = ti.types.ndarray(dtype=ti.f32, ndim=2)
F32_1D = ti.types.ndarray(dtype=ti.f32, ndim=1)
I32_2D = ti.types.ndarray(dtype=ti.i32, ndim=2)
I32_1D = ti.types.ndarray(dtype=ti.i32, ndim=1)
U8_2D = ti.types.ndarray(dtype=ti.u8, ndim=2)
F32_3D = ti.types.ndarray(dtype=ti.f32, ndim=3)


# ----------------------------------------------------------------------------- random numbers


@ti.func
def mix32(x: ti.u32) -> ti.u32:
    """lowbias32 (Chris Wellons): a well-mixed bijection on 32-bit integers."""
    x ^= x >> ti.u32(16)
    x *= ti.u32(0x7FEB352D)
    x ^= x >> ti.u32(15)
    x *= ti.u32(0x846CA68B)
    x ^= x >> ti.u32(16)
    return x


@ti.func
def sample_key(seed: ti.u32, frame: ti.u32, pixel: ti.u32, sample: ti.u32) -> ti.u32:
    k = mix32(seed ^ ti.u32(0x5BD1E995))
    k = mix32(k ^ frame)
    k = mix32(k ^ pixel)
    return mix32(k ^ sample)


@ti.func
def rand(key: ti.u32, dim: ti.i32) -> ti.f32:
    """Uniform in [0, 1): the top 24 bits of H(key + dim * golden ratio)."""
    h = mix32(key + ti.u32(dim) * ti.u32(0x9E3779B9))
    return ti.f32(h >> ti.u32(8)) * (1.0 / 16777216.0)


# ----------------------------------------------------------------------------- geometry helpers


@ti.func
def onb(n: vec3):
    """Orthonormal basis around unit n (Duff et al. 2017)."""
    sign = 1.0 if n.z >= 0.0 else -1.0
    a = -1.0 / (sign + n.z)
    b = n.x * n.y * a
    t = vec3(1.0 + sign * n.x * n.x * a, sign * b, -sign * n.x)
    s = vec3(b, sign + n.y * n.y * a, -n.y)
    return t, s


@ti.func
def to_world(v: vec3, t: vec3, s: vec3, n: vec3) -> vec3:
    return v.x * t + v.y * s + v.z * n


@ti.func
def to_local(v: vec3, t: vec3, s: vec3, n: vec3) -> vec3:
    return vec3(v.dot(t), v.dot(s), v.dot(n))


@ti.func
def offset_origin(p: vec3, n: vec3, w: vec3) -> vec3:
    """Move p off the surface, to the side of n that w leaves towards."""
    scale = RAY_EPS * ti.max(1.0, ti.max(ti.abs(p.x), ti.max(ti.abs(p.y), ti.abs(p.z))))
    side = 1.0 if w.dot(n) >= 0.0 else -1.0
    return p + n * (scale * side)


@ti.func
def safe_inv(d: vec3) -> vec3:
    big = 1e30
    return vec3(
        1.0 / d.x if ti.abs(d.x) > 1e-30 else ti.math.sign(d.x + 1e-38) * big,
        1.0 / d.y if ti.abs(d.y) > 1e-30 else ti.math.sign(d.y + 1e-38) * big,
        1.0 / d.z if ti.abs(d.z) > 1e-30 else ti.math.sign(d.z + 1e-38) * big,
    )


@ti.func
def box_entry(bounds: ti.template(), node: ti.i32, o: vec3, inv_d: vec3, t_max: ti.f32) -> ti.f32:
    """Entry distance of the ray into the node's box, or +inf when it misses within [0, t_max]."""
    tx0 = (bounds[node, 0] - o.x) * inv_d.x
    tx1 = (bounds[node, 3] - o.x) * inv_d.x
    ty0 = (bounds[node, 1] - o.y) * inv_d.y
    ty1 = (bounds[node, 4] - o.y) * inv_d.y
    tz0 = (bounds[node, 2] - o.z) * inv_d.z
    tz1 = (bounds[node, 5] - o.z) * inv_d.z
    t_near = ti.max(ti.max(ti.min(tx0, tx1), ti.min(ty0, ty1)), ti.max(ti.min(tz0, tz1), 0.0))
    t_far = ti.min(ti.min(ti.max(tx0, tx1), ti.max(ty0, ty1)), ti.min(ti.max(tz0, tz1), t_max))
    # 1 + 2 ulp-ish slack so a ray grazing a face of a flat box is not lost to rounding
    res = ti.math.inf
    if t_near <= t_far * 1.00000024:
        res = t_near
    return res


@ti.func
def tri_vertices(positions: ti.template(), indices: ti.template(), tri: ti.i32):
    i0 = indices[tri, 0]
    i1 = indices[tri, 1]
    i2 = indices[tri, 2]
    p0 = vec3(positions[i0, 0], positions[i0, 1], positions[i0, 2])
    p1 = vec3(positions[i1, 0], positions[i1, 1], positions[i1, 2])
    p2 = vec3(positions[i2, 0], positions[i2, 1], positions[i2, 2])
    return p0, p1, p2


@ti.func
def tri_hit(positions: ti.template(), indices: ti.template(), tri: ti.i32, o: vec3, d: vec3):
    """Möller–Trumbore, two-sided. Returns (t, u, v); t = inf on a miss."""
    p0, p1, p2 = tri_vertices(positions, indices, tri)
    e1 = p1 - p0
    e2 = p2 - p0
    pv = d.cross(e2)
    det = e1.dot(pv)
    t = ti.math.inf
    u = 0.0
    v = 0.0
    if ti.abs(det) > 1e-20:
        inv_det = 1.0 / det
        tv = o - p0
        u = tv.dot(pv) * inv_det
        if u >= 0.0 and u <= 1.0:
            qv = tv.cross(e1)
            v = d.dot(qv) * inv_det
            if v >= 0.0 and u + v <= 1.0:
                tt = e2.dot(qv) * inv_det
                if tt > 0.0:
                    t = tt
    return t, u, v


@ti.func
def intersect(
    positions: ti.template(),
    indices: ti.template(),
    bounds: ti.template(),
    links: ti.template(),
    o: vec3,
    d: vec3,
    t_max: ti.f32,
    any_hit: ti.template(),
):
    """Closest hit along o + t d for t in (0, t_max); with any_hit, stop at the first one."""
    hit = Hit(t=t_max, u=0.0, v=0.0, tri=-1)
    inv_d = safe_inv(d)
    stack = ti.Vector([0] * STACK_DEPTH, dt=ti.i32)
    sp = 0
    node = 0
    if box_entry(bounds, 0, o, inv_d, t_max) == ti.math.inf:
        node = -1
    while node >= 0:
        count = links[node, 1]
        if count > 0:
            first = links[node, 0]
            for k in range(first, first + count):
                t, u, v = tri_hit(positions, indices, k, o, d)
                if t < hit.t:
                    hit.t = t
                    hit.u = u
                    hit.v = v
                    hit.tri = k
            node = -1
            if ti.static(any_hit):
                if hit.tri >= 0:
                    sp = 0
            if sp > 0:
                sp -= 1
                node = stack[sp]
        else:
            left = node + 1
            right = links[node, 0]
            tl = box_entry(bounds, left, o, inv_d, hit.t)
            tr = box_entry(bounds, right, o, inv_d, hit.t)
            if tl == ti.math.inf and tr == ti.math.inf:
                node = -1
                if sp > 0:
                    sp -= 1
                    node = stack[sp]
            elif tl == ti.math.inf:
                node = right
            elif tr == ti.math.inf:
                node = left
            else:
                near = left
                far = right
                if tr < tl:
                    near = right
                    far = left
                if sp < STACK_DEPTH:
                    stack[sp] = far
                    sp += 1
                node = near
    return hit


# ----------------------------------------------------------------------------- materials


@ti.func
def srgb_texel(texels: ti.template(), lut: ti.template(), idx: ti.i32) -> vec3:
    return vec3(lut[ti.i32(texels[idx, 0])], lut[ti.i32(texels[idx, 1])], lut[ti.i32(texels[idx, 2])])


@ti.func
def texture_bilinear(
    texels: ti.template(), tex_info: ti.template(), lut: ti.template(), tex: ti.i32, uv: vec2
):
    """Bilinear lookup with repeat wrapping; uv in glTF convention (v = 0 is the top row)."""
    first = tex_info[tex, 0]
    w = tex_info[tex, 1]
    h = tex_info[tex, 2]
    x = (uv.x - ti.floor(uv.x)) * w - 0.5
    y = (uv.y - ti.floor(uv.y)) * h - 0.5
    x0f = ti.floor(x)
    y0f = ti.floor(y)
    fx = x - x0f
    fy = y - y0f
    x0 = (ti.i32(x0f) % w + w) % w
    y0 = (ti.i32(y0f) % h + h) % h
    x1 = (x0 + 1) % w
    y1 = (y0 + 1) % h
    c00 = srgb_texel(texels, lut, first + y0 * w + x0)
    c10 = srgb_texel(texels, lut, first + y0 * w + x1)
    c01 = srgb_texel(texels, lut, first + y1 * w + x0)
    c11 = srgb_texel(texels, lut, first + y1 * w + x1)
    return (c00 * (1.0 - fx) + c10 * fx) * (1.0 - fy) + (c01 * (1.0 - fx) + c11 * fx) * fy


@ti.func
def ggx_d(h: vec3, alpha: ti.f32) -> ti.f32:
    a2 = alpha * alpha
    c2 = h.z * h.z
    den = c2 * (a2 - 1.0) + 1.0
    return a2 / (PI * den * den)


@ti.func
def ggx_lambda(w: vec3, alpha: ti.f32) -> ti.f32:
    c2 = w.z * w.z
    s2 = ti.max(0.0, 1.0 - c2)
    res = 0.0
    if c2 > 0.0:
        t2 = s2 / c2
        res = 0.5 * (ti.sqrt(1.0 + alpha * alpha * t2) - 1.0)
    return res


@ti.func
def schlick(f0: vec3, c: ti.f32) -> vec3:
    m = ti.max(0.0, 1.0 - c)
    m5 = m * m * m * m * m
    return f0 + (1.0 - f0) * m5


@ti.func
def bsdf_eval(kind: ti.i32, base: vec3, alpha: ti.f32, wo: vec3, wi: vec3):
    """f * cos(theta_i) and the solid-angle pdf of sampling wi, in the local frame (n = +z)."""
    f = vec3(0.0)
    pdf = 0.0
    if wo.z > 0.0 and wi.z > 0.0:
        if kind == KIND_CONDUCTOR:
            h = (wo + wi).normalized()
            d = ggx_d(h, alpha)
            g1o = 1.0 / (1.0 + ggx_lambda(wo, alpha))
            g = 1.0 / (1.0 + ggx_lambda(wo, alpha) + ggx_lambda(wi, alpha))
            fr = schlick(base, ti.max(0.0, wi.dot(h)))
            f = fr * (d * g / (4.0 * wo.z))
            pdf = g1o * d / (4.0 * wo.z)
        else:
            f = base * (wi.z * INV_PI)
            pdf = wi.z * INV_PI
    return f, pdf


@ti.func
def ggx_sample_vndf(wo: vec3, alpha: ti.f32, u1: ti.f32, u2: ti.f32) -> vec3:
    """Visible-normal sampling (Heitz 2018); returns the microfacet normal."""
    vh = vec3(alpha * wo.x, alpha * wo.y, wo.z).normalized()
    lensq = vh.x * vh.x + vh.y * vh.y
    t1 = vec3(1.0, 0.0, 0.0)
    if lensq > 1e-12:
        t1 = vec3(-vh.y, vh.x, 0.0) / ti.sqrt(lensq)
    t2 = vh.cross(t1)
    r = ti.sqrt(u1)
    phi = 2.0 * PI * u2
    p1 = r * ti.cos(phi)
    p2 = r * ti.sin(phi)
    s = 0.5 * (1.0 + vh.z)
    p2 = (1.0 - s) * ti.sqrt(ti.max(0.0, 1.0 - p1 * p1)) + s * p2
    nh = p1 * t1 + p2 * t2 + ti.sqrt(ti.max(0.0, 1.0 - p1 * p1 - p2 * p2)) * vh
    return vec3(alpha * nh.x, alpha * nh.y, ti.max(1e-6, nh.z)).normalized()


@ti.func
def bsdf_sample(kind: ti.i32, base: vec3, alpha: ti.f32, wo: vec3, u1: ti.f32, u2: ti.f32):
    """Returns (wi, f * cos / pdf, pdf) in the local frame; pdf = 0 when no direction."""
    wi = vec3(0.0, 0.0, 1.0)
    weight = vec3(0.0)
    pdf = 0.0
    if wo.z > 0.0:
        if kind == KIND_CONDUCTOR:
            h = ggx_sample_vndf(wo, alpha, u1, u2)
            wi = 2.0 * wo.dot(h) * h - wo
            if wi.z > 0.0:
                f, pdf = bsdf_eval(kind, base, alpha, wo, wi)
                if pdf > 0.0:
                    weight = f / pdf
        else:
            r = ti.sqrt(u1)
            phi = 2.0 * PI * u2
            z = ti.sqrt(ti.max(0.0, 1.0 - u1))
            wi = vec3(r * ti.cos(phi), r * ti.sin(phi), z)
            pdf = z * INV_PI
            if pdf > 0.0:
                weight = base
    return wi, weight, pdf


# ----------------------------------------------------------------------------- lights


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
def env_dir_to_uv(d: vec3, rot: ti.f32) -> vec2:
    """Latitude-longitude: v = 0 at +y (top row); u = 0.5 looks down -z, u grows towards +x."""
    c = ti.cos(rot)
    s = ti.sin(rot)
    dx = c * d.x - s * d.z
    dz = s * d.x + c * d.z
    u = 0.5 + ti.atan2(dx, -dz) * (0.5 * INV_PI)
    v = ti.acos(ti.min(1.0, ti.max(-1.0, d.y))) * INV_PI
    return vec2(u - ti.floor(u), ti.min(v, 0.99999994))


@ti.func
def env_uv_to_dir(uv: vec2, rot: ti.f32) -> vec3:
    phi = (uv.x - 0.5) * 2.0 * PI
    theta = uv.y * PI
    st = ti.sin(theta)
    dx = st * ti.sin(phi)
    dz = -st * ti.cos(phi)
    c = ti.cos(rot)
    s = ti.sin(rot)
    return vec3(c * dx + s * dz, ti.cos(theta), -s * dx + c * dz)


@ti.func
def env_eval(
    env_params: ti.template(),
    env_texels: ti.template(),
    env_cdf: ti.template(),
    env_info: ti.template(),
    d: vec3,
):
    """Radiance arriving from direction d and the solid-angle pdf of env sampling choosing d."""
    scale = vec3(env_params[0], env_params[1], env_params[2])
    rad = scale
    pdf = 0.25 * INV_PI
    if env_info[2] != 0:
        w = env_info[0]
        h = env_info[1]
        uv = env_dir_to_uv(d, env_params[3] * (PI / 180.0))
        x = ti.min(ti.i32(uv.x * w), w - 1)
        y = ti.min(ti.i32(uv.y * h), h - 1)
        i = y * w + x
        rad = scale * vec3(env_texels[i, 0], env_texels[i, 1], env_texels[i, 2])
        p = env_cdf[i] - (env_cdf[i - 1] if i > 0 else 0.0)
        st = ti.sin((y + 0.5) * PI / h)
        pdf = 0.0
        if st > 0.0:
            pdf = p * w * h / (2.0 * PI * PI * st)
    return rad, pdf


@ti.func
def env_sample(
    env_params: ti.template(),
    env_texels: ti.template(),
    env_cdf: ti.template(),
    env_info: ti.template(),
    u1: ti.f32,
    u2: ti.f32,
    u3: ti.f32,
):
    """A direction towards the environment: by texel power when there is an image, else uniform."""
    d = vec3(0.0, 1.0, 0.0)
    if env_info[2] != 0:
        w = env_info[0]
        h = env_info[1]
        i = cdf_search(env_cdf, w * h, u1)
        y = i // w
        x = i - y * w
        d = env_uv_to_dir(vec2((x + u2) / w, (y + 0.5) / h), env_params[3] * (PI / 180.0))
    else:
        z = 1.0 - 2.0 * u2
        r = ti.sqrt(ti.max(0.0, 1.0 - z * z))
        phi = 2.0 * PI * u3
        d = vec3(r * ti.cos(phi), z, r * ti.sin(phi))
    rad, pdf = env_eval(env_params, env_texels, env_cdf, env_info, d)
    return d, rad, pdf


# ----------------------------------------------------------------------------- the kernel


@ti.kernel
def render_rect(
    x0: ti.i32,
    y0: ti.i32,
    width: ti.i32,
    height: ti.i32,
    s0: ti.i32,
    s1: ti.i32,
    seed: ti.u32,
    frame: ti.u32,
    max_depth: ti.i32,
    rr_depth: ti.i32,
    tan_x: ti.f32,
    tan_y: ti.f32,
    n_emit: ti.i32,
    n_tex: ti.i32,
    p_env: ti.f32,
    camera: F32_1D,
    positions: F32_2D,
    normals: F32_2D,
    uvs: F32_2D,
    indices: I32_2D,
    tri_material: I32_1D,
    materials: F32_2D,
    bvh_bounds: F32_2D,
    bvh_links: I32_2D,
    emit_tri: I32_1D,
    emit_cdf: F32_1D,
    tri_emit_pdf: F32_1D,
    tex_texels: U8_2D,
    tex_info: I32_2D,
    env_params: F32_1D,
    env_texels: F32_2D,
    env_cdf: F32_1D,
    env_info: I32_1D,
    srgb_lut: F32_1D,
    out: F32_3D,
):
    """out[j, i] = sum over samples s0..s1-1 of the radiance through pixel (x0 + i, y0 + j)."""
    cam_pos = vec3(camera[CAM_POS], camera[CAM_POS + 1], camera[CAM_POS + 2])
    cam_right = vec3(camera[CAM_RIGHT], camera[CAM_RIGHT + 1], camera[CAM_RIGHT + 2])
    cam_up = vec3(camera[CAM_UP], camera[CAM_UP + 1], camera[CAM_UP + 2])
    cam_fwd = vec3(camera[CAM_FORWARD], camera[CAM_FORWARD + 1], camera[CAM_FORWARD + 2])
    lens_r = camera[CAM_LENS_RADIUS]
    focus = camera[CAM_FOCUS_DIST]
    p_tris = 1.0 - p_env
    for j, i in ti.ndrange(out.shape[0], out.shape[1]):
        px = x0 + i
        py = y0 + j
        pixel = ti.u32(py) * ti.u32(width) + ti.u32(px)
        acc = vec3(0.0)
        for s in range(s0, s1):
            key = sample_key(seed, frame, pixel, ti.u32(s))
            # --- camera ray (box filter: uniform in the pixel)
            sx = (2.0 * (px + rand(key, DIM_PIXEL)) / width - 1.0) * tan_x
            sy = (1.0 - 2.0 * (py + rand(key, DIM_PIXEL + 1)) / height) * tan_y
            rd = (cam_fwd + sx * cam_right + sy * cam_up).normalized()
            ro = cam_pos
            if lens_r > 0.0:
                fp = cam_pos + rd * (focus / rd.dot(cam_fwd))
                r = lens_r * ti.sqrt(rand(key, DIM_LENS))
                phi = 2.0 * PI * rand(key, DIM_LENS + 1)
                ro = cam_pos + r * ti.cos(phi) * cam_right + r * ti.sin(phi) * cam_up
                rd = (fp - ro).normalized()
            # --- path
            L = vec3(0.0)
            beta = vec3(1.0)
            prev_pdf = 0.0
            for b in range(max_depth):
                dim = DIM_BOUNCE + b * DIMS_PER_BOUNCE
                hit = intersect(positions, indices, bvh_bounds, bvh_links, ro, rd, ti.math.inf, False)
                if hit.tri < 0:
                    if p_env > 0.0:
                        rad, pdf_e = env_eval(env_params, env_texels, env_cdf, env_info, rd)
                        w = 1.0
                        if b > 0:
                            w = power_heuristic(prev_pdf, p_env * pdf_e)
                        L += beta * rad * w
                    break
                tri = hit.tri
                i0 = indices[tri, 0]
                i1 = indices[tri, 1]
                i2 = indices[tri, 2]
                p0, p1, p2 = tri_vertices(positions, indices, tri)
                ng_front = (p1 - p0).cross(p2 - p0).normalized()
                p = ro + hit.t * rd
                wo = -rd
                m = tri_material[tri]
                # --- emission seen by this ray
                le = vec3(materials[m, MAT_EMIT], materials[m, MAT_EMIT + 1], materials[m, MAT_EMIT + 2])
                cos_front = ng_front.dot(wo)
                if le.max() > 0.0 and (cos_front > 0.0 or materials[m, MAT_EMIT_TWO_SIDED] > 0.0):
                    w = 1.0
                    if b > 0:
                        pdf_l = p_tris * tri_emit_pdf[tri] * hit.t * hit.t / ti.max(ti.abs(cos_front), 1e-8)
                        w = power_heuristic(prev_pdf, pdf_l)
                    L += beta * le * w
                if b + 1 >= max_depth:
                    break
                # --- shading frame, turned towards the incoming ray (two-sided surfaces)
                ng = ng_front if cos_front >= 0.0 else -ng_front
                bw = 1.0 - hit.u - hit.v
                ns = (
                    bw * vec3(normals[i0, 0], normals[i0, 1], normals[i0, 2])
                    + hit.u * vec3(normals[i1, 0], normals[i1, 1], normals[i1, 2])
                    + hit.v * vec3(normals[i2, 0], normals[i2, 1], normals[i2, 2])
                )
                if ns.norm_sqr() < 1e-12:
                    ns = ng
                else:
                    ns = ns.normalized()
                    if ns.dot(ng) < 0.0:
                        ns = -ns
                if ns.dot(wo) <= 1e-6:  # shading normal facing away: use the geometric one
                    ns = ng
                t_axis, s_axis = onb(ns)
                wo_l = to_local(wo, t_axis, s_axis, ns)
                kind = ti.i32(materials[m, MAT_KIND])
                alpha = ti.max(materials[m, MAT_ROUGHNESS] * materials[m, MAT_ROUGHNESS], ALPHA_MIN)
                base = vec3(materials[m, MAT_BASE], materials[m, MAT_BASE + 1], materials[m, MAT_BASE + 2])
                tex = ti.i32(materials[m, MAT_BASE_TEX])
                if tex >= 0 and tex < n_tex:
                    uv = (
                        bw * vec2(uvs[i0, 0], uvs[i0, 1])
                        + hit.u * vec2(uvs[i1, 0], uvs[i1, 1])
                        + hit.v * vec2(uvs[i2, 0], uvs[i2, 1])
                    )
                    base = base * texture_bilinear(tex_texels, tex_info, srgb_lut, tex, uv)
                # --- next-event estimation
                u_pick = rand(key, dim + DIM_LIGHT_PICK)
                ul1 = rand(key, dim + DIM_LIGHT_POS)
                ul2 = rand(key, dim + DIM_LIGHT_POS + 1)
                wi = vec3(0.0)
                li = vec3(0.0)
                pdf_light = 0.0
                q_end = vec3(0.0)  # the light point lifted off the light, towards p
                dist = ti.math.inf
                if u_pick < p_env:
                    d_env, rad, pdf_e = env_sample(
                        env_params, env_texels, env_cdf, env_info, u_pick / p_env, ul1, ul2
                    )
                    wi = d_env
                    li = rad
                    pdf_light = p_env * pdf_e
                elif n_emit > 0:
                    k = cdf_search(emit_cdf, n_emit, (u_pick - p_env) / p_tris)
                    lt = emit_tri[k]
                    q0, q1, q2 = tri_vertices(positions, indices, lt)
                    su = ti.sqrt(ul1)
                    q = q0 * (1.0 - su) + q1 * (su * (1.0 - ul2)) + q2 * (su * ul2)
                    nl = (q1 - q0).cross(q2 - q0).normalized()
                    to_l = q - p
                    d2 = to_l.norm_sqr()
                    if d2 > 0.0:
                        dist = ti.sqrt(d2)
                        wi = to_l / dist
                        cos_l = -nl.dot(wi)
                        lm = tri_material[lt]
                        if cos_l > 0.0 or (materials[lm, MAT_EMIT_TWO_SIDED] > 0.0 and cos_l < 0.0):
                            li = vec3(
                                materials[lm, MAT_EMIT],
                                materials[lm, MAT_EMIT + 1],
                                materials[lm, MAT_EMIT + 2],
                            )
                            pdf_light = p_tris * tri_emit_pdf[lt] * d2 / ti.abs(cos_l)
                            q_end = offset_origin(q, nl, -wi)
                if pdf_light > 0.0 and li.max() > 0.0 and wi.dot(ng) > 0.0:
                    wi_l = to_local(wi, t_axis, s_axis, ns)
                    f, pdf_b = bsdf_eval(kind, base, alpha, wo_l, wi_l)
                    if f.max() > 0.0:
                        # both ends are lifted off their surfaces, so the segment between them
                        # can hit neither the shading point's surface nor the light itself
                        o_sh = offset_origin(p, ng, wi)
                        d_sh = wi
                        t_sh = ti.math.inf
                        if dist < ti.math.inf:
                            seg = q_end - o_sh
                            t_sh = seg.norm()
                            d_sh = seg / t_sh
                            t_sh *= 1.0 - SHADOW_SLACK
                        sh = intersect(positions, indices, bvh_bounds, bvh_links, o_sh, d_sh, t_sh, True)
                        if sh.tri < 0:
                            L += beta * f * li * (power_heuristic(pdf_light, pdf_b) / pdf_light)
                # --- continue the path by sampling the BSDF
                wi_l, weight, pdf = bsdf_sample(
                    kind, base, alpha, wo_l, rand(key, dim + DIM_BSDF), rand(key, dim + DIM_BSDF + 1)
                )
                if pdf <= 0.0 or weight.max() <= 0.0:
                    break
                wi = to_world(wi_l, t_axis, s_axis, ns)
                if wi.dot(ng) <= 0.0:
                    break
                beta *= weight
                prev_pdf = pdf
                ro = offset_origin(p, ng, wi)
                rd = wi
                if b + 1 >= rr_depth:
                    q_survive = ti.min(beta.max(), RR_Q_MAX)
                    if rand(key, dim + DIM_RR) >= q_survive:
                        break
                    beta /= q_survive
            # a NaN or infinite sample is dropped (counted, contributes 0) so one bad path
            # cannot poison a pixel; finite fireflies are kept (unbiased)
            if not (ti.math.isnan(L).any() or ti.math.isinf(L).any()):
                acc += L
        out[j, i, 0] = acc.x
        out[j, i, 1] = acc.y
        out[j, i, 2] = acc.z

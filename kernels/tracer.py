"""The path tracer: one Taichi kernel that renders a sample range for every pixel of a rectangle.

How it works
  * Each pixel of the rectangle is one thread; it sums the radiance of samples s0..s1-1 in
    sample order into a float32 sum. Nothing a thread computes depends on the rectangle it was
    launched with, so any split of the frame gives the same per-pixel sums, bit for bit.
  * Random numbers are a counter-based hash: key = H(seed, frame, pixel, sample), and the value
    for dimension d is H(key + d * golden). Dimensions are laid out per bounce (DIM_* below), so a
    sample's path never depends on other samples or on thread scheduling.
  * Triangles are stored in BVH leaf order; traversal is a stack walk over the scene's binary
    tree collapsed into nodes of eight (meshrender.bvh_wide has the rows: eight children's boxes
    and links per row), nearest child first; each triangle is one row of p0 and its transform
    to the unit triangle (meshrender.bvh_wide.triangle_rows), tested in that frame (tri_hit).
  * Pixels go to the CPU threads PIXELS_PER_TASK at a time, whichever thread is free
    (kernels.backend turns Taichi's one-chunk-per-thread split off); nothing a pixel gets
    depends on which thread renders it.
  * Materials (kernels/bsdf.py has the models): diffuse, conductor, dielectric (smooth, rough,
    thin) and plastic, emission on any material (one- or two-sided). The BSDF works in a frame
    whose +z is the surface's FRONT (the counter-clockwise face normal's side, a dielectric's
    outside), whichever side the ray comes from; a one-sided material is black from the back.
  * Textures: a material slot names a `tex_refs` row (image, wrap modes repeat / clamp /
    mirror, sRGB colour or linear data, a 2x3 UV transform); lookups are bilinear with texel
    centres at half-integers. glTF's slots: base colour x factor; metallic-roughness per texel
    (G roughness, B metallic) into the gltf BSDF; a tangent-space normal map bends the
    interpolated normal (T from `tangents`, B = w N x T, x and y times the map's scale) BEFORE
    the leak guard below, so a map never lets light through; emission x the emissive texture.
  * Emissive textures in NEE and MIS: the compiler picks emissive triangles by area x emission
    x the texture's mean colour (the whole image's, not the triangle's footprint); a light
    sample takes the texel's radiance at the sampled point, and a BSDF ray that hits the
    emitter sees the same texel. Both use the same area pdf, so the MIS weights agree and the
    estimate is unbiased; dark texels are only sampled in vain.
  * glTF alpha: a MASK surface with alpha < cutoff, and a BLEND one with probability 1 - alpha,
    is passed through (the ray goes on from behind it, the path's bounce count unchanged), by
    camera and bounce rays and by shadow rays (an any-hit that lands on a non-opaque surface
    walks the segment in order). BLEND's coin is the sample's own hash (ALPHA_SALT_*, a dim per
    bounce and layer), so renders stay deterministic; past ALPHA_SKIPS_MAX layers a surface is
    opaque. A light sample on an emitter with alpha is weighted by its coverage there (MASK 0 or
    1, BLEND alpha), what the rays that hit it see on average.
  * Shading vs geometric normals, so that no light leaks: the interpolated normal ns is turned
    to the geometric normal ng's side; where wo lies on different sides of ns and ng, ns is
    replaced by ng. A direction wi (a BSDF sample or a light sample) counts only when ns and ng
    agree on whether it is a reflection or a transmission (sign(wi.ns) * sign(wo.ns) equal to
    sign(wi.ng) * sign(wo.ng)): otherwise the smooth normal would carry light through an opaque
    surface or reflect it off a transparent one, and the path ends. Rays leave on wi's side of
    ng (offset_origin), so a transmitted ray starts behind the surface it crossed.
  * Roughness 0 is a delta lobe (mirror, smooth refraction, a thin pane, a smooth plastic coat):
    a vertex with only delta lobes skips next-event estimation, and an emitter or the sky hit
    after a delta bounce gets MIS weight 1 (light sampling could not have found it).
  * Next-event estimation picks the environment, an emissive triangle or a point, spot or
    directional light (kernels/lights.py), uniformly over emitters as Mitsuba 3 does (the pick
    is made by scene.compile._lights); light and BSDF samples of the environment, the triangles
    and the suns with a radius are weighted by the power heuristic (MIS), while delta lights
    (point, spot, radius-0 sun) are reached by NEE alone, with no MIS weight.
  * Beside the radiance sums, each pixel gets the denoiser's albedo and normal sums over the same
    samples, recorded at the first vertex that is not delta-only (kernels/aov.py says what they
    hold), so they split as bit-identically as the image.
  * Russian roulette after `rr_depth` bounces, on the throughput times eta^2 (eta: the relative
    index the path has crossed, as Mitsuba), so radiance's 1/eta^2 inside glass does not kill
    paths there; at most `max_depth` path segments (Mitsuba's
    convention: max_depth 1 shows emitters only, 2 adds direct light).

All scene data arrive as ndarray arguments, so one kernel serves every scene with the same
features: the `features` template argument (kernels/features.py) leaves out the parts a scene
does not use (textures, alpha, the environment, punctual lights, material models), and each set
of features is compiled once per process and cached on disk by Taichi's offline cache.
"""

import math  # no "from __future__ import annotations": Taichi reads the annotations as objects

import taichi as ti
from taichi.math import vec2, vec3

from kernels.aov import clamp01, delta_tint, facing_normal, surface_albedo
from kernels.bsdf import KIND_GLTF, bsdf_eval, bsdf_has_smooth, bsdf_load, bsdf_sample, gltf_alpha
from kernels.features import F_ALPHA, F_ENV, F_GLTF, F_LIGHTS, F_TEXTURES
from kernels.lights import (
    cdf_search,
    env_eval,
    env_sample,
    light_search,
    power_heuristic,
    punctual_sample,
    suns_eval,
)
from kernels.trig import sincos_turn
from meshrender.bvh import LEAF_TRIS_MAX
from meshrender.bvh_wide import (
    EMPTY,
    LEAF_COUNT_BITS,
    STACK_DEPTH,
    TRI_FLOATS,
    WIDE_FLOATS,
    WIDE_LINKS,
)
from meshrender.bvh_wide import (
    WIDTH as W,
)
from meshrender.compiled import (
    ALPHA_MASK,
    ALPHA_OPAQUE,
    CAM_FOCUS_DIST,
    CAM_FORWARD,
    CAM_LENS_RADIUS,
    CAM_POS,
    CAM_RIGHT,
    CAM_UP,
    MAT_ALPHA,
    MAT_ALPHA_CUTOFF,
    MAT_ALPHA_MODE,
    MAT_ALPHA_TEX,
    MAT_BASE,
    MAT_BASE_TEX,
    MAT_EMIT,
    MAT_EMIT_TEX,
    MAT_EMIT_TWO_SIDED,
    MAT_METALLIC,
    MAT_MR_TEX,
    MAT_NORMAL_SCALE,
    MAT_NORMAL_TEX,
    MAT_ROUGHNESS,
    TEXREF_IMAGE,
    TEXREF_SRGB,
    TEXREF_WRAP_S,
    TEXREF_WRAP_T,
    TEXREF_XFORM,
    WRAP_MIRROR,
    WRAP_REPEAT,
)

PI = math.pi
INV_PI = 1.0 / math.pi
LEAF_COUNT_MASK = (1 << LEAF_COUNT_BITS) - 1
LINK_EMPTY = int(EMPTY)
GRAZE_SLACK = 1.00000024  # a box's far distance times this: a ray grazing a face of a flat box is kept
RAY_EPS = 1e-4  # origin offset along the normal, relative to the hit point's magnitude (>= 1)
SHADOW_SLACK = 1e-5  # shadow segments stop this fraction short of the (already lifted) light point
RR_Q_MAX = 0.95  # Russian roulette survival cap, as Mitsuba: bounds the path length in bright scenes
PIXELS_PER_TASK = 32  # pixels a CPU thread takes at a time: small enough to even out, 1 ms+ each
ALPHA_SKIPS_MAX = 16  # cut-out surfaces a ray passes through before the next is taken as opaque
ALPHA_SALT_PATH = 0xA5A5A5A5  # BLEND's own random streams (path rays, shadow rays), keyed like dims
ALPHA_SALT_SHADOW = 0x5A5A5A5A

# Sample dimensions: camera first, then a fixed block per bounce.
DIM_PIXEL = 0  # 0, 1: position inside the pixel (box filter)
DIM_LENS = 2  # 2, 3: thin lens
DIM_BOUNCE = 4
DIM_LIGHT_PICK = 0  # which light
DIM_LIGHT_POS = 1  # 1, 2: where on it
DIM_BSDF = 3  # 3, 4: BSDF direction inside a lobe
DIM_LOBE = 5  # which lobe (reflection or transmission, coat or base)
DIM_RR = 6
DIMS_PER_BOUNCE = 7

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
    # a zero component gets a huge finite inverse (never 0: `sign(0 + 1e-38)` was 0 once the
    # denormal flushed, and an axis-aligned ray, such as a sun's shadow ray, then missed every box)
    big = 1e30
    return vec3(
        1.0 / d.x if ti.abs(d.x) > 1e-30 else (big if d.x >= 0.0 else -big),
        1.0 / d.y if ti.abs(d.y) > 1e-30 else (big if d.y >= 0.0 else -big),
        1.0 / d.z if ti.abs(d.z) > 1e-30 else (big if d.z >= 0.0 else -big),
    )


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
def face_normal(tri_xf: ti.template(), tri: ti.i32) -> vec3:
    """The unit counter-clockwise normal, the direction of (p1 - p0) x (p2 - p0): the third row of
    the triangle's transform in tri_xf (meshrender.render.traversal_arrays) points that way."""
    r = tri_xf[tri]
    return vec3(r[6], r[10], r[14]).normalized()


@ti.func
def tri_hit(tri_xf: ti.template(), tri: ti.i32, o: vec3, d: vec3):
    """Two-sided, on the triangle's row of tri_xf: p0 and the inverse M of the matrix whose columns
    are e1 = p1 - p0, e2 = p2 - p0 and n = e1 x e2 (made in float64 on the host; stored by column:
    x of M's rows 0..2, then y, then z). M takes the triangle to the unit triangle in the xy plane:
    a = M (o - p0) and b = M d, the ray meets the plane at t = -a.z / b.z, and there
    (u, v) = a.xy + t b.xy are the barycentrics of p1 and p2 (Woop's unit-triangle test: two 3x3
    products and a divide, where Moller-Trumbore took two cross products and four dot products).
    Returns (t, u, v); t = inf on a miss, and on every ray for a degenerate triangle (its rows
    are 0, so b.z is 0)."""
    r = tri_xf[tri]
    tx = o.x - r[0]
    ty = o.y - r[1]
    tz = o.z - r[2]
    a0 = tx * r[4] + ty * r[8] + tz * r[12]
    a1 = tx * r[5] + ty * r[9] + tz * r[13]
    a2 = tx * r[6] + ty * r[10] + tz * r[14]
    b0 = d.x * r[4] + d.y * r[8] + d.z * r[12]
    b1 = d.x * r[5] + d.y * r[9] + d.z * r[13]
    b2 = d.x * r[6] + d.y * r[10] + d.z * r[14]
    tt = -a2 / b2
    u = a0 + tt * b0
    v = a1 + tt * b1
    ok = (b2 != 0.0) & (tt > 0.0) & (u >= 0.0) & (v >= 0.0) & (u + v <= 1.0)
    t = ti.select(ok, tt, ti.math.inf)
    return t, u, v


@ti.func
def intersect(
    tri_xf: ti.template(),
    nodes: ti.template(),
    o: vec3,
    d: vec3,
    t_max: ti.f32,
    any_hit: ti.i32,
):
    """Closest hit along o + t d for t in (0, t_max); with any_hit != 0, stop at the first one.
    Walks the 8-wide tree (meshrender.bvh_wide has the rows): a step pops a node, tests its eight
    boxes against the ray up to the nearest hit so far, and pushes the children it enters, the
    nearest last, so it is walked next; a leaf link popped is a run of triangles.
    Every call site inlines the whole traversal (Taichi inlines ti.funcs) and adds to the
    kernel's compile time: the bounce loop keeps one for its path ray and one for its shadow
    ray (any_hit is a runtime flag so the shadow ray's alpha walk can share it)."""
    hit = Hit(t=t_max, u=0.0, v=0.0, tri=-1)
    inv_d = safe_inv(d)
    neg_x = inv_d.x < 0.0
    neg_y = inv_d.y < 0.0
    neg_z = inv_d.z < 0.0
    inv_f = inv_d * GRAZE_SLACK  # far planes: 1 + 2 ulp-ish, so a ray grazing a flat box is kept
    stack = ti.Vector([0] * STACK_DEPTH, dt=ti.i32)
    sp = 1  # stack[0] = 0: the root
    while sp > 0:
        sp -= 1
        item = stack[sp]
        if item < 0:  # a leaf: ~(first << 3 | count)
            code = ~item
            first = code >> LEAF_COUNT_BITS
            count = code & LEAF_COUNT_MASK
            # the builder's leaves (LEAF_TRIS_MAX) unrolled, not a loop: a loop's row offset became
            # an add recurrence on int32, and then each of the row's floats got its own address
            # arithmetic (two instructions a load); a peer's longer leaves finish in a loop
            for j in ti.static(range(LEAF_TRIS_MAX)):
                if j < count:
                    t, u, v = tri_hit(tri_xf, first + j, o, d)
                    if t < hit.t:
                        hit.t = t
                        hit.u = u
                        hit.v = v
                        hit.tri = first + j
            for k in range(first + LEAF_TRIS_MAX, first + count):
                t, u, v = tri_hit(tri_xf, k, o, d)
                if t < hit.t:
                    hit.t = t
                    hit.u = u
                    hit.v = v
                    hit.tri = k
            if any_hit != 0 and hit.tri >= 0:
                sp = 0
        else:
            r = nodes[item]
            ts = ti.Vector([0.0] * W, dt=ti.f32)
            cs = ti.Vector([0] * W, dt=ti.i32)
            n_hit = 0
            for c in ti.static(range(W)):
                # the slab test, each axis' near and far plane chosen by the sign of the ray's
                # direction there (the same numbers as the min and max of the two distances:
                # (lo - o) * inv <= (hi - o) * inv where inv > 0, in any rounding); min and max
                # as selects, not ti.min / ti.max: those are IEEE minNum / maxNum, whose NaN rule
                # costs a compare and a blend each, where a select is one minss / maxss (the same
                # numbers for any ray that is not NaN: inv_d is finite, and a NaN ray's sample is
                # dropped)
                nx = (ti.select(neg_x, r[W + c], r[c]) - o.x) * inv_d.x
                fx = (ti.select(neg_x, r[c], r[W + c]) - o.x) * inv_f.x
                ny = (ti.select(neg_y, r[3 * W + c], r[2 * W + c]) - o.y) * inv_d.y
                fy = (ti.select(neg_y, r[2 * W + c], r[3 * W + c]) - o.y) * inv_f.y
                nz = (ti.select(neg_z, r[5 * W + c], r[4 * W + c]) - o.z) * inv_d.z
                fz = (ti.select(neg_z, r[4 * W + c], r[5 * W + c]) - o.z) * inv_f.z
                nz = ti.select(nz > 0.0, nz, 0.0)
                fz = ti.select(fz < hit.t * GRAZE_SLACK, fz, hit.t * GRAZE_SLACK)
                nxy = ti.select(nx > ny, nx, ny)
                fxy = ti.select(fx < fy, fx, fy)
                t_near = ti.select(nxy > nz, nxy, nz)
                t_far = ti.select(fxy < fz, fxy, fz)
                link = ti.bit_cast(r[WIDE_LINKS + c], ti.i32)
                cs[c] = link
                enter = (t_near <= t_far) & (link != LINK_EMPTY)
                ts[c] = ti.select(enter, t_near, ti.math.inf)
                n_hit += ti.select(enter, 1, 0)
            # n_hit, a sum over the slots, is what LLVM's SLP vectorizer starts from to build the
            # eight box tests above as one 8-wide computation (for four slots, without it, it
            # started from the sort's first compares and paired the lanes: 1.13-1.2x the rays per
            # second, bench/traversal.py); it counts the slots entered, not the distances that are
            # not inf, one compare fewer between the row's load and the branch. The children
            # entered are pushed in slot order and the nearest is then swapped to the top, so it
            # is walked next: a sorting network of eight (19 compare-exchanges, farthest first)
            # made whole renders 0.91-0.95x; the five of a network of four, with four children a
            # node, were worth it. Any-hit walks order theirs too: unordered made the Cornell box
            # 0.98x (glass_mesh 1.04x).
            if n_hit > 0:
                best_t = ti.math.inf
                best_c = 0
                for c in ti.static(range(W)):
                    closer = ts[c] < best_t
                    best_t = ti.select(closer, ts[c], best_t)
                    best_c = ti.select(closer, c, best_c)
                at = sp
                for c in ti.static(range(W)):
                    if ts[c] != ti.math.inf:  # room: meshrender.bvh_wide checks the tree's stack need
                        if c == best_c:
                            at = sp
                        stack[sp] = cs[c]
                        sp += 1
                if n_hit > 1:
                    top = stack[sp - 1]
                    stack[sp - 1] = stack[at]
                    stack[at] = top
    return hit


# ----------------------------------------------------------------------------- materials


@ti.func
def wrap_index(i: ti.i32, n: ti.i32, mode: ti.i32) -> ti.i32:
    """Texel index i of a row or column of n under a glTF wrap mode."""
    r = ti.min(ti.max(i, 0), n - 1)  # clamp to edge
    if mode == WRAP_REPEAT:
        r = (i % n + n) % n
    elif mode == WRAP_MIRROR:
        k = (i % (2 * n) + 2 * n) % (2 * n)
        r = k if k < n else 2 * n - 1 - k
    return r


@ti.func
def wrap_coord(t: ti.f32, mode: ti.i32) -> ti.f32:
    """t brought near [0, 1] without changing what it samples (float precision for big uvs)."""
    r = ti.min(ti.max(t, -1.0), 2.0)  # clamp: everything outside samples the edge anyway
    if mode == WRAP_REPEAT:
        r = t - ti.floor(t)
    elif mode == WRAP_MIRROR:
        r = t - 2.0 * ti.floor(0.5 * t)
    return r


@ti.func
def texel(texels: ti.template(), lut: ti.template(), idx: ti.i32, srgb: ti.i32) -> vec3:
    c = vec3(ti.f32(texels[idx, 0]), ti.f32(texels[idx, 1]), ti.f32(texels[idx, 2])) * (1.0 / 255.0)
    if srgb != 0:
        c = vec3(lut[ti.i32(texels[idx, 0])], lut[ti.i32(texels[idx, 1])], lut[ti.i32(texels[idx, 2])])
    return c


@ti.func
def tex_valid(
    features: ti.template(), tex_info: ti.template(), tex_refs: ti.template(), n_tex: ti.i32, ref: ti.i32
) -> ti.i32:
    """1 when `ref` names a tex_refs row whose image exists (rows may come from a peer); 0 in a
    kernel without textures (kernels/features.py), which then has no lookup behind it."""
    ok = 0
    if ti.static(features & F_TEXTURES):
        if ref >= 0 and ref < tex_refs.shape[0] and n_tex > 0:
            img = ti.i32(tex_refs[ref, TEXREF_IMAGE])
            if img >= 0 and img < n_tex:
                ok = 1
    return ok


@ti.func
def texture_sample(
    features: ti.template(), texels: ti.template(), tex_info: ti.template(), tex_refs: ti.template(),
    lut: ti.template(), ref: ti.i32, uv: vec2,
) -> vec3:  # fmt: skip
    """Bilinear lookup of a (valid) tex_refs row at uv (glTF convention: v = 0 is the top row):
    its UV transform, its wrap modes, sRGB colour or linear data; texel centres at half-integers.
    In a kernel without textures (never called there: tex_valid is 0) it is white."""
    res = vec3(1.0)
    if ti.static(features & F_TEXTURES):
        res = _bilinear(texels, tex_info, tex_refs, lut, ref, uv)
    return res


@ti.func
def _bilinear(
    texels: ti.template(), tex_info: ti.template(), tex_refs: ti.template(), lut: ti.template(),
    ref: ti.i32, uv: vec2,
) -> vec3:  # fmt: skip
    img = ti.i32(tex_refs[ref, TEXREF_IMAGE])
    first = tex_info[img, 0]
    w = tex_info[img, 1]
    h = tex_info[img, 2]
    srgb = ti.i32(tex_refs[ref, TEXREF_SRGB])
    ws = ti.i32(tex_refs[ref, TEXREF_WRAP_S])
    wt = ti.i32(tex_refs[ref, TEXREF_WRAP_T])
    tu = tex_refs[ref, TEXREF_XFORM] * uv.x + tex_refs[ref, TEXREF_XFORM + 1] * uv.y
    tv = tex_refs[ref, TEXREF_XFORM + 3] * uv.x + tex_refs[ref, TEXREF_XFORM + 4] * uv.y
    tu += tex_refs[ref, TEXREF_XFORM + 2]
    tv += tex_refs[ref, TEXREF_XFORM + 5]
    x = wrap_coord(tu, ws) * w - 0.5
    y = wrap_coord(tv, wt) * h - 0.5
    x0f = ti.floor(x)
    y0f = ti.floor(y)
    fx = x - x0f
    fy = y - y0f
    xi = ti.i32(x0f)
    yi = ti.i32(y0f)
    x0 = wrap_index(xi, w, ws)
    x1 = wrap_index(xi + 1, w, ws)
    y0 = wrap_index(yi, h, wt)
    y1 = wrap_index(yi + 1, h, wt)
    c00 = texel(texels, lut, first + y0 * w + x0, srgb)
    c10 = texel(texels, lut, first + y0 * w + x1, srgb)
    c01 = texel(texels, lut, first + y1 * w + x0, srgb)
    c11 = texel(texels, lut, first + y1 * w + x1, srgb)
    return (c00 * (1.0 - fx) + c10 * fx) * (1.0 - fy) + (c01 * (1.0 - fx) + c11 * fx) * fy


@ti.func
def hit_uv(uvs: ti.template(), indices: ti.template(), tri: ti.i32, u: ti.f32, v: ti.f32) -> vec2:
    i0 = indices[tri, 0]
    i1 = indices[tri, 1]
    i2 = indices[tri, 2]
    return (
        (1.0 - u - v) * vec2(uvs[i0, 0], uvs[i0, 1])
        + u * vec2(uvs[i1, 0], uvs[i1, 1])
        + v * vec2(uvs[i2, 0], uvs[i2, 1])
    )


@ti.func
def alpha_passes(
    features: ti.template(), materials: ti.template(), tri_material: ti.template(), uvs: ti.template(),
    indices: ti.template(), texels: ti.template(), tex_info: ti.template(), tex_refs: ti.template(),
    lut: ti.template(), n_tex: ti.i32, tri: ti.i32, u: ti.f32, v: ti.f32, key: ti.u32, dim: ti.i32,
) -> ti.i32:  # fmt: skip
    """1 when a ray goes through triangle `tri` at (u, v): glTF's MASK (alpha < cutoff) or BLEND
    (with probability 1 - alpha, decided by the sample's own random dimension `dim` of `key`).
    Always 0 in a kernel for a scene without alpha (kernels/features.py)."""
    res = 0
    if ti.static(features & F_ALPHA):
        m = tri_material[tri]
        mode = ti.i32(materials[m, MAT_ALPHA_MODE])
        if mode != ALPHA_OPAQUE:
            uv = hit_uv(uvs, indices, tri, u, v)
            a = alpha_value(features, materials, texels, tex_info, tex_refs, lut, n_tex, m, uv)
            if mode == ALPHA_MASK:
                res = 1 if a < materials[m, MAT_ALPHA_CUTOFF] else 0
            else:
                res = 1 if rand(key, dim) >= a else 0
    return res


@ti.func
def alpha_value(
    features: ti.template(), materials: ti.template(), texels: ti.template(), tex_info: ti.template(),
    tex_refs: ti.template(), lut: ti.template(), n_tex: ti.i32, m: ti.i32, uv: vec2,
) -> ti.f32:  # fmt: skip
    """Material m's alpha at uv: the factor times the base colour image's alpha."""
    a = materials[m, MAT_ALPHA]
    at = ti.i32(materials[m, MAT_ALPHA_TEX])
    if tex_valid(features, tex_info, tex_refs, n_tex, at) != 0:
        a *= texture_sample(features, texels, tex_info, tex_refs, lut, at, uv).x
    return a


@ti.func
def alpha_coverage(
    features: ti.template(), materials: ti.template(), texels: ti.template(), tex_info: ti.template(),
    tex_refs: ti.template(), lut: ti.template(), n_tex: ti.i32, m: ti.i32, uv: vec2,
) -> ti.f32:  # fmt: skip
    """How much of material m's surface is there at uv, as the rays that hit it see on average:
    1 opaque, MASK 0 or 1, BLEND alpha (a light sample's weight, matching alpha_passes)."""
    c = 1.0
    if ti.static(features & F_ALPHA):
        mode = ti.i32(materials[m, MAT_ALPHA_MODE])
        if mode != ALPHA_OPAQUE:
            a = alpha_value(features, materials, texels, tex_info, tex_refs, lut, n_tex, m, uv)
            c = a
            if mode == ALPHA_MASK:
                c = 0.0 if a < materials[m, MAT_ALPHA_CUTOFF] else 1.0
    return c


# ----------------------------------------------------------------------------- the kernel


@ti.kernel
def render_rect(
    features: ti.template(),
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
    p_tris: ti.f32,
    n_lights: ti.i32,
    n_suns: ti.i32,
    camera: F32_1D,
    positions: F32_2D,
    normals: F32_2D,
    uvs: F32_2D,
    indices: I32_2D,
    tri_material: I32_1D,
    materials: F32_2D,
    bvh_node: ti.types.ndarray(dtype=ti.types.vector(WIDE_FLOATS, ti.f32), ndim=1),
    tri_xf: ti.types.ndarray(dtype=ti.types.vector(TRI_FLOATS, ti.f32), ndim=1),
    emit_tri: I32_1D,
    emit_cdf: F32_1D,
    tri_emit_pdf: F32_1D,
    tex_texels: U8_2D,
    tex_info: I32_2D,
    tex_refs: F32_2D,
    tangents: F32_2D,
    env_params: F32_1D,
    env_texels: F32_2D,
    env_cond_cdf: F32_1D,
    env_marg_cdf: F32_1D,
    env_info: I32_1D,
    lights: F32_2D,
    srgb_lut: F32_1D,
    out: F32_3D,
    aov_out: F32_3D,
):
    """out[j, i] = sum over samples s0..s1-1 of the radiance through pixel (x0 + i, y0 + j);
    aov_out[j, i] = the same samples' sums of albedo (0..2) and shading normal (3..5), kernels/aov.py.
    `features` (kernels/features.py: the scene's features_of) says which parts this kernel holds."""
    cam_pos = vec3(camera[CAM_POS], camera[CAM_POS + 1], camera[CAM_POS + 2])
    cam_right = vec3(camera[CAM_RIGHT], camera[CAM_RIGHT + 1], camera[CAM_RIGHT + 2])
    cam_up = vec3(camera[CAM_UP], camera[CAM_UP + 1], camera[CAM_UP + 2])
    cam_fwd = vec3(camera[CAM_FORWARD], camera[CAM_FORWARD + 1], camera[CAM_FORWARD + 2])
    lens_r = camera[CAM_LENS_RADIUS]
    focus = camera[CAM_FOCUS_DIST]
    ti.loop_config(block_dim=PIXELS_PER_TASK)
    for j, i in ti.ndrange(out.shape[0], out.shape[1]):
        px = x0 + i
        py = y0 + j
        pixel = ti.u32(py) * ti.u32(width) + ti.u32(px)
        acc = vec3(0.0)
        acc_albedo = vec3(0.0)
        acc_normal = vec3(0.0)
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
                cos_phi, sin_phi = sincos_turn(rand(key, DIM_LENS + 1))
                ro = cam_pos + r * cos_phi * cam_right + r * sin_phi * cam_up
                rd = (fp - ro).normalized()
            # --- path
            L = vec3(0.0)
            beta = vec3(1.0)
            prev_pdf = 0.0  # the solid-angle pdf of the BSDF sample that led here
            prev_delta = 1  # 1: no light sample could have found what this ray hits (MIS weight 1)
            eta_path = 1.0  # relative index crossed so far: radiance's 1 / eta^2 is kept out of RR
            albedo = vec3(0.0)  # the denoiser's features (kernels/aov.py): final at the first
            normal = vec3(0.0)  # non-delta vertex, provisional at a delta one
            aov_found = 0
            aov_tint = vec3(1.0)  # the delta vertices' colour so far
            for b in range(max_depth):
                dim = DIM_BOUNCE + b * DIMS_PER_BOUNCE
                # glTF alpha: through cut-outs (MASK) and, stochastically, BLEND surfaces; hit.t
                # stays the distance from ro, so emission's MIS below sees the whole segment.
                # One traversal call site for the first hit and the ones behind cut-outs; a
                # kernel without alpha (kernels/features.py) has the first hit alone.
                hit = Hit(t=ti.math.inf, u=0.0, v=0.0, tri=-1)
                if ti.static(features & F_ALPHA):
                    o_a = ro
                    t_a = 0.0
                    n_skip = 0
                    while True:
                        hit = intersect(tri_xf, bvh_node, o_a, rd, ti.math.inf, 0)
                        hit.t += t_a
                        if hit.tri < 0 or n_skip >= ALPHA_SKIPS_MAX:
                            break
                        dim_a = (dim + DIMS_PER_BOUNCE) * ALPHA_SKIPS_MAX + n_skip
                        if alpha_passes(
                            features, materials, tri_material, uvs, indices, tex_texels, tex_info, tex_refs,
                            srgb_lut, n_tex, hit.tri, hit.u, hit.v, key ^ ti.u32(ALPHA_SALT_PATH), dim_a,
                        ) == 0:  # fmt: skip
                            break
                        o_a = offset_origin(ro + hit.t * rd, face_normal(tri_xf, hit.tri), rd)
                        t_a = (o_a - ro).dot(rd)
                        n_skip += 1
                else:  # no cut-outs: the first hit is the hit
                    hit = intersect(tri_xf, bvh_node, ro, rd, ti.math.inf, 0)
                if hit.tri < 0:
                    # the ray escapes: the environment and the suns' discs of directions, each
                    # MIS-weighted against the BSDF sample that led here (a camera ray: weight 1)
                    if aov_found == 0:  # before any non-delta vertex: the sky's colour, no normal
                        albedo = vec3(0.0)
                        normal = vec3(0.0)
                    if ti.static(features & F_ENV):
                        if p_env > 0.0:
                            rad, pdf_e = env_eval(env_params, env_texels, env_info, rd)
                            if aov_found == 0:
                                albedo = aov_tint * clamp01(rad)
                            w = 1.0
                            if prev_delta == 0:
                                w = power_heuristic(prev_pdf, p_env * pdf_e)
                            L += beta * rad * w
                    if ti.static(features & F_LIGHTS):
                        if n_suns > 0:
                            L += beta * suns_eval(lights, n_suns, rd, prev_pdf, 1 - prev_delta)
                    break
                tri = hit.tri
                i0 = indices[tri, 0]
                i1 = indices[tri, 1]
                i2 = indices[tri, 2]
                ng_front = face_normal(tri_xf, tri)
                p = ro + hit.t * rd
                wo = -rd
                m = tri_material[tri]
                uv = vec2(0.0)  # read by texture lookups alone
                if n_tex > 0:
                    uv = hit_uv(uvs, indices, tri, hit.u, hit.v)
                # --- emission seen by this ray
                le = vec3(materials[m, MAT_EMIT], materials[m, MAT_EMIT + 1], materials[m, MAT_EMIT + 2])
                et = ti.i32(materials[m, MAT_EMIT_TEX])
                if le.max() > 0.0 and tex_valid(features, tex_info, tex_refs, n_tex, et) != 0:
                    le *= texture_sample(features, tex_texels, tex_info, tex_refs, srgb_lut, et, uv)
                cos_front = ng_front.dot(wo)
                if le.max() > 0.0 and (cos_front > 0.0 or materials[m, MAT_EMIT_TWO_SIDED] > 0.0):
                    w = 1.0
                    if prev_delta == 0:
                        pdf_l = p_tris * tri_emit_pdf[tri] * hit.t * hit.t / ti.max(ti.abs(cos_front), 1e-8)
                        w = power_heuristic(prev_pdf, pdf_l)
                    L += beta * le * w
                if b + 1 >= max_depth:
                    break
                # --- shading frame: +z is the surface's front, ns on ng's side (opening comment)
                ng = ng_front
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
                    nt = ti.i32(materials[m, MAT_NORMAL_TEX])
                    has_tangents = tangents.shape[0] == positions.shape[0]
                    if tex_valid(features, tex_info, tex_refs, n_tex, nt) != 0 and has_tangents:
                        # glTF normal map: tangent space (T, B = w N x T, N), x and y times its scale
                        tg = (
                            bw * vec3(tangents[i0, 0], tangents[i0, 1], tangents[i0, 2])
                            + hit.u * vec3(tangents[i1, 0], tangents[i1, 1], tangents[i1, 2])
                            + hit.v * vec3(tangents[i2, 0], tangents[i2, 1], tangents[i2, 2])
                        )
                        tg -= ns * ns.dot(tg)
                        if tg.norm_sqr() > 1e-12:
                            tg = tg.normalized()
                            bt = ns.cross(tg) * (1.0 if tangents[i0, 3] >= 0.0 else -1.0)
                            c = texture_sample(features, tex_texels, tex_info, tex_refs, srgb_lut, nt, uv)
                            c = c * 2.0 - 1.0
                            sc = materials[m, MAT_NORMAL_SCALE]
                            nm = (c.x * sc) * tg + (c.y * sc) * bt + c.z * ns
                            if nm.norm_sqr() > 1e-12:
                                ns = nm.normalized()
                    if ns.dot(ng) < 0.0:
                        ns = -ns
                if ns.dot(wo) * (1.0 if cos_front >= 0.0 else -1.0) <= 1e-6:
                    ns = ng  # wo on different sides of ns and ng: shade with the geometric normal
                t_axis, s_axis = onb(ns)
                wo_l = to_local(wo, t_axis, s_axis, ns)
                base = vec3(materials[m, MAT_BASE], materials[m, MAT_BASE + 1], materials[m, MAT_BASE + 2])
                tex = ti.i32(materials[m, MAT_BASE_TEX])
                if tex_valid(features, tex_info, tex_refs, n_tex, tex) != 0:
                    base = base * texture_sample(features, tex_texels, tex_info, tex_refs, srgb_lut, tex, uv)
                bsdf = bsdf_load(features, materials, m, base)
                if ti.static(features & F_GLTF):
                    if bsdf.kind == KIND_GLTF:
                        mr = ti.i32(materials[m, MAT_MR_TEX])
                        # per texel: G roughness, B metallic
                        if tex_valid(features, tex_info, tex_refs, n_tex, mr) != 0:
                            c = texture_sample(features, tex_texels, tex_info, tex_refs, srgb_lut, mr, uv)
                            bsdf.alpha = gltf_alpha(materials[m, MAT_ROUGHNESS] * c.y)
                            bsdf.metallic = ti.min(1.0, ti.max(0.0, materials[m, MAT_METALLIC] * c.z))
                if aov_found == 0:  # the denoiser's features, final unless delta-only here
                    albedo = aov_tint * surface_albedo(features, bsdf)
                    if cos_front > 0.0 or materials[m, MAT_EMIT_TWO_SIDED] > 0.0:  # a light: lit up
                        albedo = aov_tint * clamp01(surface_albedo(features, bsdf) + le)
                    normal = facing_normal(ns, wo)
                    aov_found = bsdf_has_smooth(features, bsdf)
                # --- next-event estimation
                u_pick = rand(key, dim + DIM_LIGHT_PICK)
                ul1 = rand(key, dim + DIM_LIGHT_POS)
                ul2 = rand(key, dim + DIM_LIGHT_POS + 1)
                wi = vec3(0.0)
                li = vec3(0.0)
                pdf_light = 0.0  # includes the pick; for a delta light, the pick alone
                light_delta = 0  # 1: a point, spot or radius-0 sun, which no BSDF sample can hit
                q_end = vec3(0.0)  # the light point lifted off the light, towards p
                dist = ti.math.inf
                # one pick over [environment | emissive triangles | punctual lights] (scene.compile._lights)
                if u_pick < p_env:
                    if ti.static(features & F_ENV):
                        d_env, rad, pdf_e = env_sample(
                            env_params, env_texels, env_cond_cdf, env_marg_cdf, env_info, ul1, ul2
                        )
                        wi = d_env
                        li = rad
                        pdf_light = p_env * pdf_e
                elif n_emit > 0 and (u_pick < p_env + p_tris or n_lights == 0):
                    k = cdf_search(emit_cdf, n_emit, (u_pick - p_env) / p_tris)
                    lt = emit_tri[k]
                    q0, q1, q2 = tri_vertices(positions, indices, lt)
                    su = ti.sqrt(ul1)
                    q = q0 * (1.0 - su) + q1 * (su * (1.0 - ul2)) + q2 * (su * ul2)
                    nl = face_normal(tri_xf, lt)
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
                            elt = ti.i32(materials[lm, MAT_EMIT_TEX])
                            uv_l = hit_uv(uvs, indices, lt, su * (1.0 - ul2), su * ul2)
                            if tex_valid(features, tex_info, tex_refs, n_tex, elt) != 0:  # texel radiance
                                li *= texture_sample(features, tex_texels, tex_info, tex_refs, srgb_lut,
                                                     elt, uv_l)  # fmt: skip
                            if materials[lm, MAT_ALPHA_MODE] != ALPHA_OPAQUE:  # its cut-outs do not emit
                                li *= alpha_coverage(features, materials, tex_texels, tex_info, tex_refs,
                                                     srgb_lut, n_tex, lm, uv_l)  # fmt: skip
                            pdf_light = p_tris * tri_emit_pdf[lt] * d2 / ti.abs(cos_l)
                            q_end = offset_origin(q, nl, -wi)
                elif n_lights > 0:
                    if ti.static(features & F_LIGHTS):
                        lk = light_search(lights, n_lights, u_pick)
                        wi, li, pdf_light, dist, q_end, light_delta = punctual_sample(lights, lk, p, ul1, ul2)
                # (a vertex with delta lobes only skips it; ns and ng must agree on wi's side)
                wi_l = to_local(wi, t_axis, s_axis, ns)
                smooth = bsdf_has_smooth(features, bsdf)
                if pdf_light > 0.0 and li.max() > 0.0 and smooth != 0 and wi_l.z * wi.dot(ng) > 0.0:
                    f, pdf_b = bsdf_eval(features, materials, bsdf, wo_l, wi_l)
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
                        # any hit blocks, unless it is a cut-out: then the segment is walked in
                        # order from its start, through what `alpha_passes` lets by; past
                        # ALPHA_SKIPS_MAX surfaces it is blocked. One traversal call site (in a
                        # kernel without alpha, the any-hit query alone).
                        blocker = -1
                        if ti.static(features & F_ALPHA):
                            o_s = o_sh
                            t_left = t_sh
                            n_s = 0
                            any_hit = 1
                            while True:
                                sh = intersect(tri_xf, bvh_node, o_s, d_sh, t_left, any_hit)
                                if sh.tri < 0:
                                    break
                                if any_hit != 0:
                                    if materials[tri_material[sh.tri], MAT_ALPHA_MODE] == ALPHA_OPAQUE:
                                        blocker = sh.tri
                                        break
                                    any_hit = 0
                                    continue
                                if n_s >= ALPHA_SKIPS_MAX or alpha_passes(
                                    features, materials, tri_material, uvs, indices, tex_texels, tex_info,
                                    tex_refs, srgb_lut, n_tex, sh.tri, sh.u, sh.v,
                                    key ^ ti.u32(ALPHA_SALT_SHADOW),
                                    (dim + DIMS_PER_BOUNCE) * ALPHA_SKIPS_MAX + n_s,
                                ) == 0:  # fmt: skip
                                    blocker = sh.tri
                                    break
                                o2 = offset_origin(o_s + sh.t * d_sh, face_normal(tri_xf, sh.tri), d_sh)
                                t_left -= (o2 - o_s).dot(d_sh)
                                o_s = o2
                                n_s += 1
                                if t_left <= 0.0:
                                    break
                        else:  # no cut-outs: any hit blocks
                            blocker = intersect(tri_xf, bvh_node, o_sh, d_sh, t_sh, 1).tri
                        if blocker < 0:
                            mis = 1.0 if light_delta != 0 else power_heuristic(pdf_light, pdf_b)
                            L += beta * f * li * (mis / pdf_light)
                # --- continue the path by sampling the BSDF
                u_dir1 = rand(key, dim + DIM_BSDF)
                u_dir2 = rand(key, dim + DIM_BSDF + 1)
                wi_l, weight, pdf, delta, eta_s = bsdf_sample(
                    features, materials, bsdf, wo_l, u_dir1, u_dir2, rand(key, dim + DIM_LOBE)
                )
                if pdf <= 0.0 or weight.max() <= 0.0:
                    break
                wi = to_world(wi_l, t_axis, s_axis, ns)
                if wi.dot(ng) * wi_l.z <= 0.0:  # ns and ng disagree on wi's side: it would leak
                    break
                beta *= weight
                if aov_found == 0:
                    aov_tint *= delta_tint(weight, eta_s)
                prev_pdf = pdf
                prev_delta = delta
                eta_path *= eta_s
                ro = offset_origin(p, ng, wi)  # on wi's side: behind the surface when transmitted
                rd = wi
                if b + 1 >= rr_depth:
                    q_survive = ti.min(beta.max() * eta_path * eta_path, RR_Q_MAX)
                    if rand(key, dim + DIM_RR) >= q_survive:
                        break
                    beta /= q_survive
            # a NaN or infinite sample is dropped (counted, contributes 0) so one bad path
            # cannot poison a pixel; finite fireflies are kept (unbiased)
            if not (ti.math.isnan(L).any() or ti.math.isinf(L).any()):
                acc += L
            acc_albedo += albedo
            acc_normal += normal
        out[j, i, 0] = acc.x
        out[j, i, 1] = acc.y
        out[j, i, 2] = acc.z
        aov_out[j, i, 0] = acc_albedo.x
        aov_out[j, i, 1] = acc_albedo.y
        aov_out[j, i, 2] = acc_albedo.z
        aov_out[j, i, 3] = acc_normal.x
        aov_out[j, i, 4] = acc_normal.y
        aov_out[j, i, 5] = acc_normal.z

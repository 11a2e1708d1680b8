"""Compiling a loaded scene into flat arrays (`CompiledScene`).

Steps: concatenate every mesh into one vertex and triangle list with global material ids;
build the BVH over all triangles and reorder triangles into leaf order; pack materials,
textures (uint8 texels, one flat array, an image stored once however many slots read it, and
one `tex_refs` row per way a slot samples it: wrap modes, sRGB or linear, UV transform), the
vertex tangents of normal-mapped meshes, emitters (triangles with a power CDF and each
triangle's area-measure selection pdf), the environment (texels and the marginal/conditional
tables of its bilinear luminance x sin(theta) density), the point, spot and directional lights
(one row each, suns with a radius first, in a canonical order) with NEE's pick over the
environment, the emissive triangles and those lights (uniform over emitters), and the camera.
The result depends only on the scene's content, never on file names or paths (those survive
only as human-readable names), and is byte-for-byte deterministic.
"""

from __future__ import annotations

import math

import blake3
import numpy as np

from ..bvh import build_bvh
from ..compiled import (
    ALPHA_MODES,
    CAM_FOCUS_DIST,
    CAM_FORWARD,
    CAM_FOV_AXIS,
    CAM_FOV_DEG,
    CAM_LENS_RADIUS,
    CAM_POS,
    CAM_RIGHT,
    CAM_STRIDE,
    CAM_UP,
    COAT_TABLE_SIZE,
    FOV_AXES,
    FRESNELS,
    KINDS,
    LIGHT_ANGLE,
    LIGHT_CDF,
    LIGHT_COS_INNER,
    LIGHT_COS_OUTER,
    LIGHT_DIR,
    LIGHT_INV_TRANSITION,
    LIGHT_KIND,
    LIGHT_PICK,
    LIGHT_POINT,
    LIGHT_POS,
    LIGHT_RGB,
    LIGHT_SPOT,
    LIGHT_STRIDE,
    LIGHT_SUN,
    MAT_ALPHA,
    MAT_ALPHA_CUTOFF,
    MAT_ALPHA_MODE,
    MAT_ALPHA_TEX,
    MAT_BASE,
    MAT_BASE_TEX,
    MAT_COAT_RINT,
    MAT_COAT_TABLE,
    MAT_EMIT,
    MAT_EMIT_TEX,
    MAT_EMIT_TWO_SIDED,
    MAT_ETA,
    MAT_FRESNEL,
    MAT_IOR,
    MAT_K,
    MAT_KIND,
    MAT_METALLIC,
    MAT_MR_TEX,
    MAT_NORMAL_SCALE,
    MAT_NORMAL_TEX,
    MAT_ROUGHNESS,
    MAT_STRIDE,
    MAT_THIN,
    MAT_TWO_SIDED,
    TEXREF_IMAGE,
    TEXREF_SRGB,
    TEXREF_STRIDE,
    TEXREF_WRAP_S,
    TEXREF_WRAP_T,
    TEXREF_XFORM,
    WRAPS,
    CompiledScene,
)
from ..errors import SceneError
from ..heap import release_free_memory
from .materials import coat_tables
from .types import (
    CameraDesc,
    EnvironmentDesc,
    LightDesc,
    LoadedScene,
    MaterialDesc,
    MeshData,
    TextureImage,
    TextureSampler,
)

LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 weights, for light power
LIGHT_KINDS = ("point", "spot", "directional")
LIGHTS_MAX = 100_000  # punctual lights per scene (scene.file's ENTRIES_MAX): a row each, a pick's search
SPOT_CUTOFF_DEG_MAX = 180.0  # a spot of cutoff 180 lights every direction but its back axis
SUN_RADIUS_DEG_MAX = 89.0  # a disc of directions below a hemisphere; the sun is 0.27
SRGB_SLOTS = ("base_color", "emission")  # colour; the other slots hold linear data (glTF 2.0 3.9)
MAT_TEX_SLOTS = {
    "base_color": MAT_BASE_TEX,
    "metallic_roughness": MAT_MR_TEX,
    "normal": MAT_NORMAL_TEX,
    "emission": MAT_EMIT_TEX,
    "alpha": MAT_ALPHA_TEX,
}


def _material_row(mat: MaterialDesc, tex_index: int, refs: dict[str, int] | None = None) -> np.ndarray:
    """The material's MAT_STRIDE floats (layout in meshrender.compiled; models in kernels.bsdf).
    `tex_index` is the base colour's tex_refs row, `refs` the other slots' (absent: none)."""
    row = np.zeros(MAT_STRIDE, np.float32)
    for slot, col in MAT_TEX_SLOTS.items():
        row[col] = (refs or {}).get(slot, -1)
    row[MAT_METALLIC] = mat.metallic
    row[MAT_NORMAL_SCALE] = mat.normal_scale
    row[MAT_ALPHA_MODE] = ALPHA_MODES[mat.alpha_mode]
    row[MAT_ALPHA_CUTOFF] = mat.alpha_cutoff
    row[MAT_ALPHA] = mat.alpha
    row[MAT_KIND] = KINDS[mat.kind]
    row[MAT_BASE : MAT_BASE + 3] = mat.base_color
    row[MAT_BASE_TEX] = tex_index
    row[MAT_ROUGHNESS] = mat.roughness
    row[MAT_EMIT : MAT_EMIT + 3] = mat.emission
    row[MAT_EMIT_TWO_SIDED] = 1.0 if mat.two_sided_emission else 0.0
    row[MAT_TWO_SIDED] = 1.0 if mat.two_sided else 0.0
    row[MAT_FRESNEL] = FRESNELS[mat.fresnel]
    row[MAT_ETA : MAT_ETA + 3] = mat.eta
    row[MAT_K : MAT_K + 3] = mat.k
    row[MAT_IOR] = mat.ior
    row[MAT_THIN] = 1.0 if mat.thin else 0.0
    if mat.kind == "plastic":
        r_int, table = coat_tables(float(mat.ior), float(mat.roughness))
        row[MAT_COAT_RINT] = r_int
        row[MAT_COAT_TABLE : MAT_COAT_TABLE + COAT_TABLE_SIZE] = table
    return row


def _texture_u8(tex: TextureImage, srgb: bool = True) -> np.ndarray:
    px = tex.pixels
    if px.dtype == np.uint8:
        return px[..., :3]
    lin = np.clip(np.asarray(px[..., :3], np.float64), 0.0, 1.0)
    if not srgb:  # a float data texture (e.g. a normal map from an EXR): stored linear
        return np.round(lin * 255.0).astype(np.uint8)
    # a float (linear) colour texture is stored sRGB-encoded like the others
    enc = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.power(lin, 1 / 2.4) - 0.055)
    return np.round(enc * 255.0).astype(np.uint8)


def _tex_ref_row(image: int, sampler: TextureSampler, srgb: bool) -> np.ndarray:
    row = np.zeros(TEXREF_STRIDE, np.float32)
    row[TEXREF_IMAGE] = image
    row[TEXREF_WRAP_S] = WRAPS[sampler.wrap_s]
    row[TEXREF_WRAP_T] = WRAPS[sampler.wrap_t]
    row[TEXREF_SRGB] = 1.0 if srgb else 0.0
    row[TEXREF_XFORM : TEXREF_XFORM + 6] = sampler.transform
    return row


def _emission_texture_mean(mat: MaterialDesc) -> np.ndarray:
    """The emissive texture's mean linear colour (1 without one): NEE picks emitters by power."""
    t = mat.emission_texture
    if t is None:
        return np.ones(3)
    px = np.asarray(t.pixels[..., :3])
    if px.dtype == np.uint8:
        c = np.arange(256, dtype=np.float64) / 255.0
        lut = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return lut[px].reshape(-1, 3).mean(axis=0)
    return np.clip(px.astype(np.float64), 0.0, 1.0).reshape(-1, 3).mean(axis=0)


def camera_array(cam: CameraDesc) -> np.ndarray:
    pos = np.asarray(cam.position, np.float64)
    fwd = np.asarray(cam.look_at, np.float64) - pos
    dist = float(np.linalg.norm(fwd))
    if not dist > 0:
        raise SceneError("camera", "position and look_at are the same point")
    fwd /= dist
    right = np.cross(fwd, np.asarray(cam.up, np.float64))
    if not np.linalg.norm(right) > 1e-9:
        raise SceneError("camera", "up is parallel to the view direction")
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    out = np.zeros(CAM_STRIDE, np.float32)
    out[CAM_POS : CAM_POS + 3] = pos
    out[CAM_RIGHT : CAM_RIGHT + 3] = right
    out[CAM_UP : CAM_UP + 3] = up
    out[CAM_FORWARD : CAM_FORWARD + 3] = fwd
    out[CAM_FOV_DEG] = cam.fov_deg
    out[CAM_FOV_AXIS] = FOV_AXES.index(cam.fov_axis)
    out[CAM_LENS_RADIUS] = cam.aperture_radius
    out[CAM_FOCUS_DIST] = cam.focus_distance if cam.focus_distance > 0 else dist
    return out


def camera_at(arrays: dict[str, np.ndarray], frame: int, *, source: str = "camera") -> np.ndarray:
    """The camera row of `frame`: the static camera, or the keyframes interpolated linearly (in
    float64 from their float32 values, the same on every machine) and held outside their range."""
    keys = arrays.get("camera_keys")
    if keys is None:
        return arrays["camera"]
    k = keys.astype(np.float64)
    if frame <= k[0, 0]:
        row = k[0]
    elif frame >= k[-1, 0]:
        row = k[-1]
    else:
        j = int(np.searchsorted(k[:, 0], frame, side="right"))
        a, b = k[j - 1], k[j]
        row = a + (b - a) * ((frame - a[0]) / (b[0] - a[0]))
    cam = CameraDesc(
        position=tuple(row[1:4]),
        look_at=tuple(row[4:7]),
        up=tuple(row[7:10]),
        fov_deg=float(row[10]),
        fov_axis=FOV_AXES[int(arrays["camera"][CAM_FOV_AXIS])],
        aperture_radius=float(row[11]),
        focus_distance=float(row[12]),
    )
    try:
        return camera_array(cam)
    except SceneError as exc:
        raise SceneError(source, f"camera at frame {frame}: {exc.problem}") from None


def camera_tangents(camera: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """tan of the half field of view along x and y for a width x height frame."""
    t = math.tan(math.radians(float(camera[CAM_FOV_DEG])) / 2)
    axis = FOV_AXES[int(camera[CAM_FOV_AXIS])]
    if axis == "smaller":
        axis = "x" if width <= height else "y"
    elif axis == "larger":
        axis = "x" if width >= height else "y"
    if axis == "x":
        return t, t * height / width
    return t * width / height, t


def _environment(env: EnvironmentDesc, source: str) -> dict[str, np.ndarray]:
    """The environment's arrays: texels (linear, >= 0) and the sampling tables of its bilinear
    luminance x sin(theta) density (kernels/lights.py has the scheme and the mapping)."""
    with np.errstate(over="ignore"):
        if not np.all(np.isfinite(np.array([*env.color, env.rotation_deg], np.float32))):
            raise SceneError(source, f"environment: color {tuple(env.color)} is too large for float32")
    if env.image is None:
        return {
            "env_params": np.array([*env.color, env.rotation_deg, 0.0], np.float32),
            "env_texels": np.zeros((0, 3), np.float32),
            "env_cond_cdf": np.zeros(0, np.float32),
            "env_marg_cdf": np.zeros(0, np.float32),
            "env_info": np.array([0, 0, 0], np.int32),
        }
    px = np.asarray(env.image.pixels)
    if px.dtype == np.uint8:
        lin = px[..., :3].astype(np.float64) / 255.0
        px = np.where(lin <= 0.04045, lin / 12.92, ((lin + 0.055) / 1.055) ** 2.4)
    px = np.asarray(px[..., :3], np.float32)
    bad = int(np.count_nonzero(~np.isfinite(px)))
    if bad:
        raise SceneError(source, f"environment image {env.image.name}: {bad} values are not finite numbers")
    px = np.ascontiguousarray(np.maximum(px, 0.0))  # a radiance below 0 is a filtering artefact
    h, w = px.shape[:2]
    sin_t = np.sin((np.arange(h) + 0.5) * np.pi / h)
    node = (px.astype(np.float64) @ LUMINANCE) * sin_t[:, None]  # the density at texel centres
    cells = 0.5 * (node + np.roll(node, -1, axis=1))  # cell x spans columns x .. x + 1 (wrapping)
    cum = np.cumsum(cells, axis=1)
    totals = np.concatenate([[0.0], cum[:, -1], [0.0]])  # node rows: +y pole, the rows, -y pole
    dv = np.full(h + 1, 1.0 / h)
    dv[0] = dv[-1] = 0.5 / h  # the bands between a pole and the first / last row centre
    band = 0.5 * (totals[:-1] + totals[1:]) * dv
    z = float(band.sum())
    marg = np.cumsum(band) / z if z > 0 else np.arange(1, h + 2) / (h + 1)  # black: never picked
    marg[-1] = 1.0
    return {
        "env_params": np.array([*env.color, env.rotation_deg, z], np.float32),
        "env_texels": px.reshape(-1, 3),
        "env_cond_cdf": cum.astype(np.float32).ravel(),
        "env_marg_cdf": marg.astype(np.float32),
        "env_info": np.array([w, h, 1], np.int32),
    }


def _env_power(env: dict[str, np.ndarray], radius: float) -> float:
    """Power the environment sends into the scene's bounding sphere: pi r^2 x the integral of
    its luminance over directions (for NEE's pick, like pbrt's and Mitsuba's power sampler)."""
    params = env["env_params"].astype(np.float64)
    if env["env_info"][2] == 0:
        radiance = params[:3] * 4.0 * np.pi
    else:
        w, h = int(env["env_info"][0]), int(env["env_info"][1])
        rows = env["env_texels"].reshape(h, w, 3).astype(np.float64).sum(axis=1)  # (h, 3)
        edges = np.cos(np.arange(h + 1) * np.pi / h)
        solid = (edges[:-1] - edges[1:]) * (2.0 * np.pi / w)  # a texel's solid angle, per row
        radiance = params[:3] * (solid @ rows)
    return float(np.pi * radius * radius * (radiance @ LUMINANCE))


def _mesh_digest(mesh: MeshData, tex_digest: dict[int, bytes]) -> bytes:
    """A digest of everything about a mesh that renders (never its name or file)."""
    h = blake3.blake3()
    for arr in (mesh.positions, mesh.indices, mesh.material_ids, mesh.normals, mesh.uvs):
        if arr is None:
            h.update(b"-")
        else:
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    if mesh.tangents is not None:
        h.update(np.ascontiguousarray(mesh.tangents, np.float32).tobytes())
    for m in mesh.materials:
        slots = m.textures()
        for _slot, t in slots:
            if id(t) not in tex_digest:
                px = np.ascontiguousarray(t.pixels)
                head = f"{px.dtype.str}{px.shape}".encode()
                tex_digest[id(t)] = blake3.blake3(head + px.tobytes()).digest()
        if [slot for slot, _ in slots] == ["base_color"]:
            tex = tex_digest[id(slots[0][1])]  # as before glTF's other slots: the order stays
        else:
            tex = b"".join(slot.encode() + tex_digest[id(t)] for slot, t in slots) or b"-"
        desc = (m.kind, m.base_color, m.roughness, m.emission, m.two_sided_emission)
        if (m.kind, m.two_sided, m.fresnel, m.ior, m.thin) != ("diffuse", False, "schlick", 1.5, False):
            desc += (m.two_sided, m.fresnel, m.eta, m.k, m.ior, m.thin)  # Step 8's fields, when used
        gltf = (m.metallic, m.normal_scale, m.alpha_mode, m.alpha_cutoff, m.alpha, sorted(m.samplers.items()))
        if gltf != (0.0, 1.0, "opaque", 0.5, 1.0, []):
            desc += gltf  # glTF's fields, when used
        h.update(repr(desc).encode() + tex)
    return h.digest()


def canonical_order(meshes: list[MeshData]) -> list[MeshData]:
    """Meshes sorted by content, so load order and names never change the compiled arrays."""
    tex_digest: dict[int, bytes] = {}
    keyed = [(_mesh_digest(m, tex_digest), i) for i, m in enumerate(meshes)]
    return [meshes[i] for _, i in sorted(keyed)]


def compile_scene(scene: LoadedScene) -> CompiledScene:
    if not scene.meshes:
        raise SceneError(scene.source, "the scene has no meshes")
    meshes = canonical_order(scene.meshes)
    positions, normals, uvs, indices, tri_mat, tangents = [], [], [], [], [], []
    materials: list[np.ndarray] = []
    material_names: list[str] = []
    textures: list[np.ndarray] = []
    texture_names: list[str] = []
    tex_ids: dict[tuple[int, bool], int] = {}  # (id(TextureImage), sRGB) -> image, stored once
    ref_rows: list[np.ndarray] = []
    ref_ids: dict[bytes, int] = {}  # a tex_refs row's bytes -> its index
    mat_ids: dict[int, int] = {}  # id(MaterialDesc) -> index
    emit_scale: list[np.ndarray] = []  # per material: the emissive texture's mean colour
    need_tangents = any(m.normal_texture is not None for mesh in meshes for m in mesh.materials)
    v_off = 0
    ranges = []
    for mesh in meshes:
        local_to_global = np.empty(len(mesh.materials), np.int32)
        for li, mat in enumerate(mesh.materials):
            if id(mat) not in mat_ids:
                refs: dict[str, int] = {}
                for slot, t in mat.textures():
                    # a uint8 image is one array whatever its colour space; a float one is
                    # encoded per space, so it is stored once per space it is read in
                    srgb = slot in SRGB_SLOTS
                    key = (id(t), srgb or t.pixels.dtype == np.uint8)
                    if key not in tex_ids:
                        tex_ids[key] = len(textures)
                        textures.append(_texture_u8(t, srgb))
                        texture_names.append(t.name)
                    row = _tex_ref_row(tex_ids[key], mat.samplers.get(slot, TextureSampler()), srgb)
                    refs[slot] = ref_ids.setdefault(row.tobytes(), len(ref_rows))
                    if refs[slot] == len(ref_rows):
                        ref_rows.append(row)
                mat_ids[id(mat)] = len(materials)
                materials.append(_material_row(mat, refs.get("base_color", -1), refs))
                material_names.append(mat.name)
                emit_scale.append(_emission_texture_mean(mat))
            local_to_global[li] = mat_ids[id(mat)]
        nv = len(mesh.positions)
        positions.append(np.asarray(mesh.positions, np.float32))
        normals.append(
            np.zeros((nv, 3), np.float32) if mesh.normals is None else np.asarray(mesh.normals, np.float32)
        )
        uvs.append(np.zeros((nv, 2), np.float32) if mesh.uvs is None else np.asarray(mesh.uvs, np.float32))
        if need_tangents:
            tan = mesh.tangents
            tangents.append(np.zeros((nv, 4), np.float32) if tan is None else np.asarray(tan, np.float32))
        indices.append(np.asarray(mesh.indices, np.int64) + v_off)
        tri_mat.append(local_to_global[np.asarray(mesh.material_ids, np.int64)])
        ranges.append((v_off, nv))
        v_off += nv
    P = np.concatenate(positions)
    idx = np.concatenate(indices)
    if idx.size == 0:
        raise SceneError(scene.source, "the scene has no triangles")
    tm = np.concatenate(tri_mat).astype(np.int32)

    bvh = build_bvh(P[idx[:, 0]], P[idx[:, 1]], P[idx[:, 2]])
    idx = idx[bvh.order].astype(np.int32)
    tm = tm[bvh.order]

    mats = np.stack(materials).astype(np.float32)
    emitters = _emitters(P, idx, tm, mats, np.stack(emit_scale))
    environment = _environment(scene.environment, scene.source)

    if textures:
        tex_info = []
        first = 0
        for t in textures:
            h, w = t.shape[:2]
            tex_info.append((first, w, h))
            first += w * h
        texels = np.concatenate([t.reshape(-1, 3) for t in textures])
    else:
        tex_info, texels = np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8)

    arrays = {
        "positions": P,
        "normals": np.concatenate(normals),
        "uvs": np.concatenate(uvs),
        "indices": idx,
        "tri_material": tm,
        "materials": mats,
        "bvh_bounds": bvh.bounds,
        "bvh_links": bvh.links,
        **emitters,
        "tex_texels": np.ascontiguousarray(texels, np.uint8),
        "tex_info": np.asarray(tex_info, np.int32).reshape(-1, 3),
        "tex_refs": np.asarray(ref_rows, np.float32).reshape(-1, TEXREF_STRIDE),
        "tangents": np.concatenate(tangents) if tangents else np.zeros((0, 4), np.float32),
        **environment,
        **_lights(scene, P, idx, tm, mats, emitters, environment, np.stack(emit_scale)),
        "camera": camera_array(scene.camera),
        "mesh_vertex_ranges": np.asarray(ranges, np.int32).reshape(-1, 2),
    }
    if scene.camera_keys:
        arrays["camera_keys"] = np.array(
            [[f, *c.position, *c.look_at, *c.up, c.fov_deg, c.aperture_radius, c.focus_distance]
             for f, c in scene.camera_keys],
            np.float32,
        )  # fmt: skip
        first, last = int(scene.camera_keys[0][0]), int(scene.camera_keys[-1][0])
        for frame in range(first, last + 1):  # outside the keys the camera holds: checked already
            camera_at(arrays, frame, source=scene.source)
    if scene.frames is not None:
        arrays["frames"] = np.asarray(scene.frames, np.int32)
    compiled = CompiledScene(
        source=scene.source,
        arrays=arrays,
        settings=scene.settings,
        mesh_names=[m.name for m in meshes],
        material_names=material_names,
        texture_names=texture_names,
    )
    release_free_memory()  # the BVH build's temporaries: glibc would keep their pages (meshrender.heap)
    return compiled


def _emitters(
    P: np.ndarray, idx: np.ndarray, tm: np.ndarray, mats: np.ndarray, emit_scale: np.ndarray
) -> dict[str, np.ndarray]:
    """Emissive triangles, chosen for next-event estimation in proportion to their power (an
    emissive texture counts by its mean colour over the whole image)."""
    emit = (mats[:, MAT_EMIT : MAT_EMIT + 3].astype(np.float64) * emit_scale) @ LUMINANCE
    tri_power_density = emit[tm]
    is_emitter = tri_power_density > 0
    tri_emit_pdf = np.zeros(len(idx), np.float32)
    e_tris = np.nonzero(is_emitter)[0]
    if len(e_tris) == 0:
        return {
            "emit_tri": np.zeros(0, np.int32),
            "emit_cdf": np.zeros(0, np.float32),
            "tri_emit_pdf": tri_emit_pdf,
        }
    p0, p1, p2 = (P[idx[e_tris, k]].astype(np.float64) for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(p1 - p0, p2 - p0), axis=1)
    power = area * tri_power_density[e_tris]
    keep = power > 0
    e_tris, area, power = e_tris[keep], area[keep], power[keep]
    total = power.sum()
    if not total > 0:
        return {
            "emit_tri": np.zeros(0, np.int32),
            "emit_cdf": np.zeros(0, np.float32),
            "tri_emit_pdf": tri_emit_pdf,
        }
    cdf = np.cumsum(power) / total
    cdf[-1] = 1.0
    tri_emit_pdf[e_tris] = (power / total / area).astype(np.float32)
    return {
        "emit_tri": e_tris.astype(np.int32),
        "emit_cdf": cdf.astype(np.float32),
        "tri_emit_pdf": tri_emit_pdf,
    }


def _light_row(i: int, light: LightDesc, radius: float, source: str) -> tuple[np.ndarray, float]:
    """One row of the `lights` table (see LIGHT_* in meshrender.compiled) and the light's power."""
    what = f"light {i} ({light.kind})"
    if light.kind not in LIGHT_KINDS:
        raise SceneError(source, f"{what}: kind must be one of {', '.join(LIGHT_KINDS)}")
    values = [*light.position, *light.direction, *light.intensity]
    values += [light.cutoff_deg, light.beam_width_deg, light.angular_radius_deg]
    if not all(math.isfinite(v) for v in values):
        raise SceneError(source, f"{what}: every value must be a finite number")
    rgb = np.asarray(light.intensity, np.float64)
    if np.any(rgb < 0):
        raise SceneError(source, f"{what}: intensity/irradiance must be >= 0, got {tuple(light.intensity)}")
    row = np.zeros(LIGHT_STRIDE, np.float64)
    row[LIGHT_POS : LIGHT_POS + 3] = light.position
    if light.kind != "point":
        d = np.asarray(light.direction, np.float64)
        norm = float(np.linalg.norm(d))
        if not norm > 0:
            raise SceneError(source, f"{what}: direction is the zero vector")
        row[LIGHT_DIR : LIGHT_DIR + 3] = d / norm
    lum = float(rgb @ LUMINANCE)
    if light.kind == "point":
        row[LIGHT_KIND] = LIGHT_POINT
        power = 4.0 * math.pi * lum
    elif light.kind == "spot":
        cutoff, beam = light.cutoff_deg, light.beam_width_deg
        if not 0.0 < cutoff <= SPOT_CUTOFF_DEG_MAX:
            raise SceneError(source, f"{what}: cutoff_deg {cutoff} is outside (0, {SPOT_CUTOFF_DEG_MAX}]")
        if not 0.0 <= beam <= cutoff:
            raise SceneError(source, f"{what}: beam_width_deg {beam} is outside [0, cutoff_deg {cutoff}]")
        c, b = math.radians(cutoff), math.radians(beam)
        row[LIGHT_KIND] = LIGHT_SPOT
        row[LIGHT_COS_OUTER], row[LIGHT_COS_INNER], row[LIGHT_ANGLE] = math.cos(c), math.cos(b), c
        row[LIGHT_INV_TRANSITION] = 1.0 / (c - b) if c > b else 0.0
        # the falloff integrated over the sphere: 2 pi (1 - (sin c - sin b) / (c - b))
        cone = 1.0 - (math.sin(c) - math.sin(b)) / (c - b) if c > b else 1.0 - math.cos(c)
        power = 2.0 * math.pi * cone * lum
    else:
        r_deg = light.angular_radius_deg
        if not 0.0 <= r_deg <= SUN_RADIUS_DEG_MAX:
            problem = f"angular_radius_deg {r_deg} is outside [0, {SUN_RADIUS_DEG_MAX}]"
            raise SceneError(source, f"{what}: {problem}")
        row[LIGHT_KIND] = LIGHT_SUN
        if r_deg > 0:
            r = math.radians(r_deg)
            one_minus_cos = 2.0 * math.sin(r / 2) ** 2  # no cancellation for the sun's 0.27 degrees
            row[LIGHT_ANGLE] = one_minus_cos
            row[LIGHT_COS_OUTER] = math.cos(r)
            # a disc of uniform radiance L gives a surface facing it E = L pi sin^2 r
            row[LIGHT_RGB : LIGHT_RGB + 3] = rgb / (math.pi * math.sin(r) ** 2)
        power = lum * math.pi * radius * radius  # the irradiance over the scene's bounding disc
    if light.kind != "directional" or light.angular_radius_deg == 0:
        row[LIGHT_RGB : LIGHT_RGB + 3] = rgb
    with np.errstate(over="ignore"):
        if not (np.all(np.isfinite(row.astype(np.float32))) and math.isfinite(power)):
            raise SceneError(source, f"{what}: a value is too large for the renderer's float32")
    return row, power


def _is_sun(row: np.ndarray) -> bool:
    """A directional light with an angular radius: the kernel's miss branch can see it."""
    return bool(row[LIGHT_KIND] == LIGHT_SUN and row[LIGHT_ANGLE] > 0)


def _lights(
    scene: LoadedScene,
    P: np.ndarray,
    idx: np.ndarray,
    tm: np.ndarray,
    mats: np.ndarray,
    emitters: dict[str, np.ndarray],
    env: dict[str, np.ndarray],
    emit_scale: np.ndarray,
) -> dict[str, np.ndarray]:
    """The punctual lights' table and NEE's pick over the environment, the emissive triangles (as
    one group; `emit_cdf` chooses inside it by power) and each punctual light.

    The pick is uniform over emitters, as Mitsuba 3's is: the environment, each emissive material
    (a lamp) and each punctual light count one each, if they give light at all. A pick by power
    starves a small bright lamp beside a sky: the sky's power grows with the scene's bounding
    disc (pi R^2), so in a room lit by a ceiling lamp with a sky outside it took 95% of the light
    samples and the lamp's 5% made the room 1.6-3x noisier than Mitsuba at the same spp. Inside
    the triangle group the pick stays by power (`emit_cdf`)."""
    if len(scene.lights) > LIGHTS_MAX:
        raise SceneError(scene.source, f"{len(scene.lights)} lights: more than {LIGHTS_MAX}")
    lo, hi = P.min(axis=0).astype(np.float64), P.max(axis=0).astype(np.float64)
    radius = max(0.5 * float(np.linalg.norm(hi - lo)), 1e-6)  # the bounding sphere, as Mitsuba
    rows = [_light_row(i, light, radius, scene.source) for i, light in enumerate(scene.lights)]
    # suns with a radius first (the kernel's miss branch walks only those), then a canonical
    # order, so the order a file lists its lights in does not change the compiled scene
    rows.sort(key=lambda rp: (not _is_sun(rp[0]), rp[0].tobytes()))
    e_tris = emitters["emit_tri"]
    tri_power = 0.0
    if len(e_tris):
        p0, p1, p2 = (P[idx[e_tris, k]].astype(np.float64) for k in range(3))
        area = 0.5 * np.linalg.norm(np.cross(p1 - p0, p2 - p0), axis=1)
        m = mats[tm[e_tris]].astype(np.float64)
        sides = 1.0 + (m[:, MAT_EMIT_TWO_SIDED] > 0)
        le = m[:, MAT_EMIT : MAT_EMIT + 3] * emit_scale[tm[e_tris]]
        tri_power = float(np.pi * np.sum(area * sides * (le @ LUMINANCE)))
    powers = np.array([_env_power(env, radius), tri_power, *(p for _, p in rows)], np.float64)
    if not math.isfinite(float(powers.sum())):
        problem = "the lights' total power overflows: an emission, intensity or environment is too large"
        raise SceneError(scene.source, problem)
    lamps = len(np.unique(tm[e_tris])) if len(e_tris) else 0  # emissive materials: a lamp each
    weights = (powers > 0) * np.array([1.0, lamps, *([1.0] * len(rows))])
    total = float(weights.sum())
    probs = weights / total if total > 0 else np.zeros_like(weights)
    table = np.zeros((len(rows), LIGHT_STRIDE), np.float64)
    if rows:
        table[:] = [r for r, _ in rows]
        table[:, LIGHT_PICK] = probs[2:]
        table[:, LIGHT_CDF] = probs[0] + probs[1] + np.cumsum(probs[2:])
        table[-1, LIGHT_CDF] = 1.0
    return {"lights": table.astype(np.float32), "light_pick": probs[:2].astype(np.float32)}

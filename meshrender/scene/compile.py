"""Compiling a loaded scene into flat arrays (`CompiledScene`).

Steps: concatenate every mesh into one vertex and triangle list with global material ids;
build the BVH over all triangles and reorder triangles into leaf order; pack materials,
textures (uint8 sRGB texels, one flat array), emitters (triangles with a power CDF and each
triangle's area-measure selection pdf), the environment (texels and a luminance x sin(theta)
CDF) and the camera. The result depends only on the scene's content, never on file names or
paths (those survive only as human-readable names), and is byte-for-byte deterministic.
"""

from __future__ import annotations

import math

import blake3
import numpy as np

from ..bvh import build_bvh
from ..compiled import (
    CAM_FOCUS_DIST,
    CAM_FORWARD,
    CAM_FOV_AXIS,
    CAM_FOV_DEG,
    CAM_LENS_RADIUS,
    CAM_POS,
    CAM_RIGHT,
    CAM_STRIDE,
    CAM_UP,
    FOV_AXES,
    KIND_CONDUCTOR,
    KIND_DIFFUSE,
    MAT_BASE,
    MAT_BASE_TEX,
    MAT_EMIT,
    MAT_EMIT_TWO_SIDED,
    MAT_KIND,
    MAT_ROUGHNESS,
    MAT_STRIDE,
    CompiledScene,
)
from ..errors import SceneError
from .types import CameraDesc, EnvironmentDesc, LoadedScene, MaterialDesc, MeshData, TextureImage

LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 weights, for light power


def _material_row(mat: MaterialDesc, tex_index: int) -> np.ndarray:
    row = np.zeros(MAT_STRIDE, np.float32)
    row[MAT_KIND] = KIND_CONDUCTOR if mat.kind == "conductor" else KIND_DIFFUSE
    row[MAT_BASE : MAT_BASE + 3] = mat.base_color
    row[MAT_BASE_TEX] = tex_index
    row[MAT_ROUGHNESS] = mat.roughness
    row[MAT_EMIT : MAT_EMIT + 3] = mat.emission
    row[MAT_EMIT_TWO_SIDED] = 1.0 if mat.two_sided_emission else 0.0
    return row


def _texture_u8(tex: TextureImage) -> np.ndarray:
    px = tex.pixels
    if px.dtype == np.uint8:
        return px[..., :3]
    # a float (linear) base-colour texture is stored sRGB-encoded like the others
    lin = np.clip(np.asarray(px[..., :3], np.float64), 0.0, 1.0)
    enc = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.power(lin, 1 / 2.4) - 0.055)
    return np.round(enc * 255.0).astype(np.uint8)


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


def _environment(env: EnvironmentDesc) -> dict[str, np.ndarray]:
    params = np.array([*env.color, env.rotation_deg], np.float32)
    if env.image is None:
        return {
            "env_params": params,
            "env_texels": np.zeros((0, 3), np.float32),
            "env_cdf": np.zeros(0, np.float32),
            "env_info": np.array([0, 0, 0], np.int32),
        }
    px = np.asarray(env.image.pixels)
    if px.dtype == np.uint8:
        lin = px[..., :3].astype(np.float64) / 255.0
        px = np.where(lin <= 0.04045, lin / 12.92, ((lin + 0.055) / 1.055) ** 2.4)
    px = np.ascontiguousarray(px[..., :3], np.float32)
    h, w = px.shape[:2]
    sin_t = np.sin((np.arange(h) + 0.5) * np.pi / h)
    weight = (np.maximum(px.astype(np.float64), 0) @ LUMINANCE) * sin_t[:, None]
    total = weight.sum()
    if not total > 0:
        # a black image: sample uniformly over texels (the light is zero anyway)
        weight = np.broadcast_to(sin_t[:, None], (h, w))
        total = weight.sum()
    cdf = np.cumsum(weight.ravel()) / total
    cdf[-1] = 1.0
    return {
        "env_params": params,
        "env_texels": px.reshape(-1, 3),
        "env_cdf": cdf.astype(np.float32),
        "env_info": np.array([w, h, 1], np.int32),
    }


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
    for m in mesh.materials:
        t = m.base_color_texture
        if t is not None and id(t) not in tex_digest:
            px = np.ascontiguousarray(t.pixels)
            tex_digest[id(t)] = blake3.blake3(f"{px.dtype.str}{px.shape}".encode() + px.tobytes()).digest()
        tex = tex_digest[id(t)] if t is not None else b"-"
        desc = (m.kind, m.base_color, m.roughness, m.emission, m.two_sided_emission)
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
    positions, normals, uvs, indices, tri_mat = [], [], [], [], []
    materials: list[np.ndarray] = []
    material_names: list[str] = []
    textures: list[np.ndarray] = []
    texture_names: list[str] = []
    tex_ids: dict[int, int] = {}  # id(TextureImage) -> index, so a shared texture is stored once
    mat_ids: dict[int, int] = {}  # id(MaterialDesc) -> index
    v_off = 0
    ranges = []
    for mesh in meshes:
        local_to_global = np.empty(len(mesh.materials), np.int32)
        for li, mat in enumerate(mesh.materials):
            if id(mat) not in mat_ids:
                tex_index = -1
                if mat.base_color_texture is not None:
                    t = mat.base_color_texture
                    if id(t) not in tex_ids:
                        tex_ids[id(t)] = len(textures)
                        textures.append(_texture_u8(t))
                        texture_names.append(t.name)
                    tex_index = tex_ids[id(t)]
                mat_ids[id(mat)] = len(materials)
                materials.append(_material_row(mat, tex_index))
                material_names.append(mat.name)
            local_to_global[li] = mat_ids[id(mat)]
        nv = len(mesh.positions)
        positions.append(np.asarray(mesh.positions, np.float32))
        normals.append(
            np.zeros((nv, 3), np.float32) if mesh.normals is None else np.asarray(mesh.normals, np.float32)
        )
        uvs.append(np.zeros((nv, 2), np.float32) if mesh.uvs is None else np.asarray(mesh.uvs, np.float32))
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
    emitters = _emitters(P, idx, tm, mats)

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
        **_environment(scene.environment),
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
    return CompiledScene(
        source=scene.source,
        arrays=arrays,
        settings=scene.settings,
        mesh_names=[m.name for m in meshes],
        material_names=material_names,
        texture_names=texture_names,
    )


def _emitters(P: np.ndarray, idx: np.ndarray, tm: np.ndarray, mats: np.ndarray) -> dict[str, np.ndarray]:
    """Emissive triangles, chosen for next-event estimation in proportion to their power."""
    emit = mats[:, MAT_EMIT : MAT_EMIT + 3].astype(np.float64) @ LUMINANCE
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

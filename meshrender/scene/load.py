"""`load_scene`: a scene file, a bare mesh file or a built-in name to a checked `LoadedScene`.

How: first every file the scene needs is listed without loading anything heavy (mesh files,
their MTLs and textures, glTF buffers and images, the scene's own textures and environment
image); if any is missing, one MissingAssetsError lists them all and nothing is loaded. Then
meshes load one by one (a shared TextureCache loads each image once), are placed, and are
checked: finite positions, at least one triangle, a non-zero area for every light, valid
colours; shading normals of zero length are replaced by face-area-weighted ones. Warnings
(ignored features, repaired data) are collected on `LoadedScene.warnings` and logged to the
`meshrender.scene` logger.

Every file is read through one `SceneFiles` (`confine.py`): what the scene names must lie in
the scene file's folder tree (a bare mesh's own folder) unless `allow_outside` is given, and must
be a regular file within its decoder's byte budget.

A bare mesh gets a camera framed on its bounding box (from the front, a little above and to
the right, fov 40, the bounding sphere filling the smaller image axis), a constant white
environment and default render settings. Built-in scenes are TOML files in `meshrender/data`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from pathlib import Path

import numpy as np

from ..compiled import FRESNELS, KINDS
from ..errors import MissingAssetsError, SceneError
from ..settings import RenderSettings
from . import gltf, obj, ply
from .confine import SceneFiles
from .file import ETA_K_MAX, MESH_SUFFIXES, SceneFile, apply_transform, check_camera, parse_scene_file
from .images import TextureCache, srgb_to_linear
from .materials import IOR_MAX, IOR_MIN
from .types import CameraDesc, EnvironmentDesc, LoadedScene, MaterialDesc, MeshData, TextureImage

log = logging.getLogger("meshrender.scene")

BUILTIN_PREFIX = "builtin:"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SCENE_TRIS_MAX = 1 << 27  # 134M triangles in one scene: beyond what a peer can compile and hold
SCENE_MESHES_MAX = 1 << 17  # meshes after placement (glTF nodes included): the manifest's segments per array
AUTO_FOV_DEG = 40.0
AUTO_VIEW_DIR = (0.35, 0.45, 1.0)  # from the front (+z), a little above (+y) and to the right (+x)
AUTO_MARGIN = 1.05  # the bounding sphere fills 1/1.05 of the smaller image axis
WHITE = (1.0, 1.0, 1.0)
SKY_SIZE_PX = (256, 128)  # rows enough that the smooth gradient shows no bands in the background


def default_environment() -> EnvironmentDesc:
    """A soft studio sky for scenes that name no light: 1.0 at the zenith, 0.6 at the horizon,
    0.15 towards the ground (neutral grey), so a light object still reads against it."""
    w, h = SKY_SIZE_PX
    y = np.cos((np.arange(h) + 0.5) * np.pi / h)  # +1 at the top row, -1 at the bottom
    level = np.where(y >= 0, 0.6 + 0.4 * y, 0.15 + 0.45 * (1 + y) ** 4)
    pixels = np.repeat(level[:, None, None], w, axis=1).repeat(3, axis=2).astype(np.float32)
    return EnvironmentDesc(color=WHITE, image=TextureImage("default sky", pixels))


def list_builtins() -> list[str]:
    """Names accepted by `load_scene` as NAME or builtin:NAME."""
    if not DATA_DIR.is_dir():
        return []
    return sorted(d.name for d in DATA_DIR.iterdir() if (d / f"{d.name}.toml").is_file())


def _exists(path: Path) -> bool:
    """Whether the path names anything (a dangling symlink too); a name the file system cannot
    even look up (ENAMETOOLONG) names nothing, rather than raising."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return False


def load_scene(spec: str | os.PathLike, *, allow_outside: bool = False) -> LoadedScene:
    """Load a `.toml` scene file, a Mitsuba 3 `.xml`, a bare `.obj`/`.ply`/`.gltf`/`.glb`, or a built-in name.
    `allow_outside` lets the scene read files outside its own folder tree (`--allow-outside`)."""
    text = os.fspath(spec)
    builtin = None
    if text.startswith(BUILTIN_PREFIX):
        builtin = text[len(BUILTIN_PREFIX) :]
    elif not Path(text).suffix and text in list_builtins() and not _exists(Path(text)):
        builtin = text
    if builtin is not None:
        if builtin not in list_builtins():
            raise SceneError(text, f"no built-in scene '{builtin}' (built-ins: {', '.join(list_builtins())})")
        files = SceneFiles(DATA_DIR)  # a built-in may use the meshes of another
        scene = _load_scene_file(DATA_DIR / builtin / f"{builtin}.toml", files)
        scene.source = f"{BUILTIN_PREFIX}{builtin}"
        return scene
    path = Path(text)
    if "\0" in text or not _exists(path):
        raise SceneError(text, "file not found")
    if path.is_dir():
        raise SceneError(text, "is a directory, not a scene or mesh file")
    suffix = path.suffix.lower()
    files = SceneFiles.beside(path, allow_outside=allow_outside)
    if Path(os.path.realpath(path)).is_relative_to(DATA_DIR):  # a built-in named by its path
        files = SceneFiles(DATA_DIR, allow_outside=allow_outside, top=path)
    load = {".toml": _load_scene_file, ".xml": _load_mitsuba, **dict.fromkeys(MESH_SUFFIXES, _load_bare_mesh)}
    if suffix in load:
        scene = load[suffix](path, files)
        scene.inputs = sorted(files.inputs | {os.path.realpath(path)})
        return scene
    kinds = ", ".join((".toml", ".xml") + MESH_SUFFIXES)
    raise SceneError(text, f"unknown file type '{path.suffix}' (expected {kinds}, or a built-in scene name)")


def load_mesh_file(
    path: str | os.PathLike,
    *,
    warnings: list[str] | None = None,
    textures: TextureCache | None = None,
    files: SceneFiles | None = None,
) -> list[MeshData]:
    """The meshes of one file, by its suffix; glTF may give several, OBJ and PLY one. `files`
    confines what it reads (default: to the file's own folder)."""
    path = Path(path)
    files = files or SceneFiles.beside(path)
    textures = textures or TextureCache(files)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return [obj.load_obj(path, warnings=warnings, textures=textures, files=files)]
    if suffix == ".ply":
        return [ply.load_ply(path, warnings=warnings, files=files)]
    if suffix in (".gltf", ".glb"):
        return gltf.load_gltf(path, warnings=warnings, textures=textures, files=files)
    raise SceneError(str(path), f"unknown mesh type '{path.suffix}' (expected {', '.join(MESH_SUFFIXES)})")


def mesh_dependencies(path: str | os.PathLike, files: SceneFiles | None = None) -> list[Path]:
    """Files a mesh file needs besides itself (MTLs, textures, buffers, images)."""
    path = Path(path)
    files = files or SceneFiles.beside(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return obj.referenced_files(path, files=files)
    if suffix in (".gltf", ".glb"):
        return gltf.referenced_files(path, files=files)
    return []


# ------------------------------------------------------------------------------ scene kinds


def _load_bare_mesh(path: Path, files: SceneFiles) -> LoadedScene:
    src = str(path)
    missing = [str(p) for p in mesh_dependencies(path, files) if not files.exists(p, "named file", src)]
    if missing:
        raise MissingAssetsError(src, sorted(set(missing)))
    warnings: list[str] = []
    meshes = load_mesh_file(path, warnings=warnings, files=files)
    emitters: dict = {}
    tris = 0
    for m in meshes:
        _check_mesh(m, src, warnings, emitters)
        tris = _check_total(tris, m, len(meshes), src)
    _check_emitters(emitters)
    scene = LoadedScene(
        source=src,
        meshes=meshes,
        camera=frame_camera(meshes),
        environment=default_environment(),
        settings=RenderSettings(),
    )
    return _finish(scene, warnings)


def _load_scene_file(path: Path, files: SceneFiles) -> LoadedScene:
    sf = parse_scene_file(path, files=files)
    src = str(path)
    _check_missing(sf, files)
    warnings: list[str] = []
    cache = TextureCache(files)
    materials = {name: _material(name, t, sf.base, cache, src) for name, t in sf.materials.items()}

    meshes: list[MeshData] = []
    tris = 0
    emitters: dict = {}
    real_of: dict[str, str] = {}  # as written -> real path: each name resolved once
    loaded_of: dict[str, list[MeshData]] = {}  # by real path: a file placed several times is read once
    checked: set[int] = set()  # id() of loaded meshes whose indices, UVs and materials were checked
    for (label, e), m4 in zip(sf.entries(), sf.matrices, strict=True):
        is_light = label.startswith("lights")
        file = sf.base / e.file
        key = real_of.get(e.file)
        if key is None:
            key = real_of[e.file] = os.fspath(files.resolve(file, f"{label}.file", src))
        if key not in loaded_of:
            loaded_of[key] = load_mesh_file(file, warnings=warnings, textures=cache, files=files)
        loaded = [copy.copy(m) for m in loaded_of[key]]  # arrays shared, never written in place
        override = materials[e.material] if e.material is not None else None
        if is_light:
            base = override or MaterialDesc(name="black", base_color=(0.0, 0.0, 0.0))
            override = dataclasses.replace(
                base, name=e.name or e.file, emission=tuple(e.radiance), two_sided_emission=e.two_sided
            )
            if max(e.radiance) == 0.0:
                warnings.append(f"{src}: light '{e.name or e.file}' has zero radiance")
        for source_mesh, m in zip(loaded_of[key], loaded, strict=True):
            if override is not None:
                m.materials = [override]
                m.material_ids = np.zeros(len(m.indices), np.int32)
            m = apply_transform(m, m4)
            if e.name is not None:
                m.name = e.name if len(loaded) == 1 else f"{e.name}:{m.name.rpartition(':')[2]}"
            elif file.suffix.lower() not in (".gltf", ".glb"):
                m.name = e.file
            light_name = (e.name or e.file) if is_light else None
            seen = override is None and id(source_mesh) in checked
            _check_mesh(m, str(file), warnings, emitters, light_name=light_name, placed_again=seen)
            if override is None:
                checked.add(id(source_mesh))
            meshes.append(m)
            tris = _check_total(tris, m, len(meshes), src)
    _check_emitters(emitters)

    env = sf.environment
    image = None
    if env.image is not None:
        tex = cache.load(sf.base / env.image, src=src)
        image = TextureImage(tex.name, srgb_to_linear(tex.pixels))
    if env.color is None and image is None:
        environment = default_environment()
    else:
        color = env.color if env.color is not None else WHITE
        environment = EnvironmentDesc(color=tuple(color), image=image, rotation_deg=env.rotation_deg)
    scene = LoadedScene(
        source=src,
        meshes=meshes,
        camera=sf.camera if sf.camera is not None else frame_camera(meshes),
        environment=environment,
        settings=sf.settings,
        camera_keys=sf.camera_keys,
        frames=sf.frames,
        lights=sf.punctual,
    )
    return _finish(scene, warnings)


def _load_mitsuba(path: Path, files: SceneFiles) -> LoadedScene:
    """A Mitsuba 3 XML scene (`mitsuba.py`), checked like the others."""
    from .mitsuba import parse_mitsuba

    scene = parse_mitsuba(path, files, frame_camera=frame_camera, tris_max=SCENE_TRIS_MAX)
    emitters: dict = {}
    tris = 0
    for k, m in enumerate(scene.meshes):
        _check_mesh(m, str(path), scene.warnings, emitters)
        tris = _check_total(tris, m, k + 1, str(path))
    _check_emitters(emitters)
    return _finish(scene, scene.warnings)


def _check_missing(sf: SceneFile, files: SceneFiles) -> None:
    """Every file the scene needs, checked before anything loads; all missing ones in one error.
    A file outside the scene's folder tree, or not a regular file, is a SceneError at once."""
    missing: list[str] = []
    src = str(sf.path)
    checked: set[str] = set()

    def need(p: Path, what: str) -> bool:
        if files.exists(p, what, src):
            return True
        missing.append(str(p))
        return False

    for label, e in sf.entries():
        if e.file in checked:  # a file placed many times is looked at once
            continue
        checked.add(e.file)
        f = sf.base / e.file
        if need(f, f"{label}.file"):
            for dep in mesh_dependencies(f, files):
                need(dep, f"a file that {e.file} names")
    for name, t in sf.materials.items():
        if t.base_color_texture is not None:
            need(sf.base / t.base_color_texture, f"materials.{name}.base_color_texture")
    if sf.environment.image is not None:
        need(sf.base / sf.environment.image, "environment.image")
    if missing:
        raise MissingAssetsError(str(sf.path), sorted(set(missing)))


def _material(name: str, t, base: Path, cache: TextureCache, src: str) -> MaterialDesc:
    return MaterialDesc(
        name=name,
        base_color_texture=cache.load(base / t.base_color_texture, src=src) if t.base_color_texture else None,
        **t.desc_fields(f"materials.{name}", src),
    )


def _finish(scene: LoadedScene, warnings: list[str]) -> LoadedScene:
    check_camera(scene.camera, scene.source)
    scene.warnings = warnings
    for w in warnings:
        log.warning("%s", w)
    return scene


# ------------------------------------------------------------------------------- validation


def _check_bsdf(mat: MaterialDesc, what: str, src: str) -> None:
    """The Step 8 fields, whichever loader set them: the kernel takes them as they are."""
    if mat.kind not in KINDS or mat.fresnel not in FRESNELS:
        raise SceneError(src, f"{what}: unknown kind {mat.kind!r} or fresnel {mat.fresnel!r}")
    if mat.kind in ("dielectric", "plastic") and not IOR_MIN <= mat.ior <= IOR_MAX:
        raise SceneError(src, f"{what}: ior {mat.ior} is outside {IOR_MIN}..{IOR_MAX}")
    if not all(0.0 <= v <= ETA_K_MAX for v in (*mat.eta, *mat.k)):  # NaN fails too
        raise SceneError(src, f"{what}: eta and k must lie in 0..{ETA_K_MAX}")


def _check_emitters(emitters: dict) -> None:
    for label, src, mesh_name, area in emitters.values():
        if not area > 0.0:
            raise SceneError(src, f"light '{label}' has zero area (mesh '{mesh_name}')")


def _check_total(tris: int, mesh: MeshData, meshes: int, src: str) -> int:
    """The running triangle count with `mesh` added (kept by the caller: no re-summing)."""
    tris += len(mesh.indices)
    if tris > SCENE_TRIS_MAX:
        raise SceneError(src, f"the scene has more than {SCENE_TRIS_MAX} triangles")
    if meshes > SCENE_MESHES_MAX:
        raise SceneError(src, f"the scene has more than {SCENE_MESHES_MAX} meshes (after placement)")
    return tris


def _check_color(c, what: str, src: str) -> None:
    if len(c) != 3 or not all(math.isfinite(v) and v >= 0.0 for v in c):
        raise SceneError(src, f"{what} {tuple(c)} must be three finite numbers >= 0")


def _check_mesh(
    mesh: MeshData,
    src: str,
    warnings: list[str],
    emitters: dict,
    light_name: str | None = None,
    placed_again: bool = False,
) -> None:
    """Reject what cannot render; repair shading normals that cannot be normalised. The area of
    each emitting material is added up in `emitters` (by material object: a light's meshes share
    one) for `_check_emitters`. `placed_again`: the same file's mesh, with the same materials,
    was checked at another placement; only what the placement changes is checked again."""
    name = mesh.name
    nt, nv = len(mesh.indices), len(mesh.positions)
    if nt == 0:
        raise SceneError(src, f"mesh '{name}' has no triangles")
    if not placed_again and (mesh.indices.min() < 0 or mesh.indices.max() >= nv):
        raise SceneError(src, f"mesh '{name}': a triangle index is out of range ({nv} vertices)")
    if not np.isfinite(mesh.positions).all():
        bad = int(np.count_nonzero(~np.isfinite(mesh.positions).all(axis=1)))
        raise SceneError(src, f"mesh '{name}': {bad} of {nv} vertex positions are NaN or infinite")
    if mesh.uvs is not None and not placed_again:
        bad = int(np.count_nonzero(~np.isfinite(mesh.uvs).all(axis=1)))
        if bad:
            raise SceneError(src, f"mesh '{name}': {bad} of {nv} texture coordinates are NaN or infinite")
    for mat in () if placed_again else mesh.materials:
        what = f"mesh '{name}' material '{mat.name}'"
        _check_color(mat.base_color, f"{what}: base colour", src)
        _check_color(mat.emission, f"{what}: emission", src)
        if not 0.0 <= mat.roughness <= 1.0:
            raise SceneError(src, f"{what}: roughness {mat.roughness} is outside 0..1")
        _check_bsdf(mat, what, src)
    if any(m.is_emissive for m in mesh.materials):
        tri_area = 0.5 * np.linalg.norm(_face_normals(mesh), axis=1)
        area = np.bincount(mesh.material_ids, weights=tri_area, minlength=len(mesh.materials))
        for k, mat in enumerate(mesh.materials):
            if mat.is_emissive:
                entry = emitters.setdefault(id(mat), [light_name or mat.name, src, name, 0.0])
                entry[3] += float(area[k])
    if mesh.normals is not None:
        n = mesh.normals.astype(np.float64)
        length = np.linalg.norm(n, axis=1)
        broken = ~(np.isfinite(length) & (length > 0))
        if broken.any():
            face_n = _face_normals(mesh)  # area-weighted: |cross| is twice the area
            acc = np.zeros((nv, 3))
            for c in range(3):
                for axis in range(3):
                    acc[:, axis] += np.bincount(mesh.indices[:, c], weights=face_n[:, axis], minlength=nv)
            n[broken] = acc[broken]
            length = np.linalg.norm(n, axis=1, keepdims=True)
            mesh.normals = np.divide(n, length, out=np.zeros_like(n), where=length > 0).astype(np.float32)
            warnings.append(
                f"{src}: mesh '{name}': {int(broken.sum())} shading normals were zero or not finite; "
                "replaced by face normals"
            )
        elif np.abs(length - 1.0).max() > 1e-3:
            mesh.normals = (n / length[:, None]).astype(np.float32)


def _face_normals(mesh: MeshData) -> np.ndarray:
    """Per-triangle cross products (length = twice the area), in float64."""
    p = mesh.positions.astype(np.float64)
    a, b, c = p[mesh.indices[:, 0]], p[mesh.indices[:, 1]], p[mesh.indices[:, 2]]
    return np.cross(b - a, c - a)


def frame_camera(meshes: list[MeshData]) -> CameraDesc:
    """A camera that sees every mesh: the bounding sphere fits the smaller image axis at fov 40."""
    lo = np.min([m.positions[m.indices.reshape(-1)].min(axis=0) for m in meshes], axis=0).astype(np.float64)
    hi = np.max([m.positions[m.indices.reshape(-1)].max(axis=0) for m in meshes], axis=0).astype(np.float64)
    center = (lo + hi) / 2
    radius = float(np.linalg.norm(hi - lo)) / 2 or 1.0
    d = np.asarray(AUTO_VIEW_DIR) / np.linalg.norm(AUTO_VIEW_DIR)
    dist = AUTO_MARGIN * radius / math.sin(math.radians(AUTO_FOV_DEG) / 2)
    pos = center + d * dist
    return CameraDesc(
        position=tuple(float(v) for v in pos),
        look_at=tuple(float(v) for v in center),
        up=(0.0, 1.0, 0.0),
        fov_deg=AUTO_FOV_DEG,
        fov_axis="smaller",
    )

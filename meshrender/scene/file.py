"""The TOML scene file: its format, its validation, and the transforms it places meshes with.

How: `tomllib` parses the text (a syntax error is reported with its line), every float is
checked to be finite, then msgspec converts the tables into the Structs below, which forbid
unknown keys, so a typo is an error naming the key and where it is (`render: unknown key
`spq``). Cross-references (material names, transform keys, camera geometry) are checked here
too; nothing in this module touches the files the scene names — `load.py` does that. Budgets:
the file's size (read through `SceneFiles`, so it must be a regular file) and the nesting depth
of its tables and arrays (a 3000-deep nesting is an error naming the limit, not a RecursionError).

Format (paths are relative to the scene file; every table and key is optional unless marked):

    [render]                  # any RenderSettings field: width, height, spp, pass_spp, max_depth,
    resolution = [256, 256]   #   rr_depth, seed, bucket_px, exposure; resolution = [W, H] sets
    spp = 64                  #   width and height (give one or the other, not both)
    max_depth = 8

    [camera]                  # absent: framed automatically on the scene's bounding box
    position = [0, 0, 3.9]
    look_at = [0, 0, 0]
    up = [0, 1, 0]
    fov_deg = 39.3077         # 0 < fov_deg < 180
    fov_axis = "smaller"      # "x", "y", "smaller" or "larger": the image axis fov_deg spans
    aperture_radius = 0.0     # thin lens; 0 is a pinhole
    focus_distance = 0.0      # 0: the distance from position to look_at

    [[camera.keyframes]]      # an animated camera: any of position, look_at, up, fov_deg,
    frame = 0                 #   aperture_radius, focus_distance at a frame (unset: from [camera]);
    position = [0, 0, 3.9]    #   each is interpolated linearly between keyframes (frames strictly
    [[camera.keyframes]]      #   increasing, at most 10 000 of them), held before the first and
    frame = 47                #   after the last; stored as float32
    position = [2, 0, 3.4]

    [animation]
    frames = [0, 47]          # the frames a job renders by default (default: first..last keyframe,
                              #   or 0..0 without keyframes)

    [environment]             # light from infinitely far; absent: a soft grey studio sky
    color = [0, 0, 0]         # constant radiance; multiplies the image when one is given
    image = "sky.exr"         # optional equirect (EXR/HDR linear, PNG/JPEG sRGB): +y up, the
                              #   image centre looks down +z, its left/right edges down -z
                              #   (Mitsuba's envmap); looked up bilinearly, texel-centred
    rotation_deg = 0.0        # about +y, right-handed; -360..360

    [materials.white]         # a named material, for meshes and lights to refer to
    type = "diffuse"          # "diffuse", "conductor" (metal), "dielectric" (glass, water) or
                              #   "plastic" (a dielectric coat over a diffuse base)
    base_color = [0.8, 0.8, 0.8]      # diffuse and plastic: reflectance; conductor: Schlick's F0
                              #   (or a scale on the complex / "none" Fresnel); dielectric: a
                              #   tint on the transmission (1 = clear); multiplies the texture
    base_color_texture = "tex.png"    # PNG/JPEG (sRGB) or EXR/HDR (linear)
    roughness = 0.5           # 0..1, conductor, dielectric, plastic: GGX alpha = roughness^2;
                              #   0 is perfectly smooth (a mirror, clear glass)
    emission = [0, 0, 0]      # radiance; > 0 makes every triangle of the material a light
    two_sided_emission = false  # one-sided lights emit on the side of the CCW face normal
    two_sided = false         # diffuse, conductor, plastic: reflect on both sides; false (as
                              #   Mitsuba) leaves the back (against the CCW face normal) black

    [materials.gold]
    type = "conductor"
    conductor = "Au"          # a measured metal: Au, Ag, Cu, Al, Cr, W (scene.materials) ...
    # eta = [0.14, 0.37, 1.44]  # ... or a complex index of refraction eta + i k per channel
    # k = [3.98, 2.39, 1.60]
    # fresnel = "schlick"     # "schlick" (F0 = base_color, the default without eta/k),
                              #   "complex" (with conductor or eta/k), "none" (F = 1: a mirror)

    [materials.glass]
    type = "dielectric"       # always two-sided: the CCW face normal points outside
    ior = "glass"             # inside over outside; a number or a preset: glass (BK7 1.5046),
                              #   water, diamond, air, acrylic, ... (scene.materials); default 1.5
    roughness = 0.0
    thin = false              # a thin pane (one surface, two interfaces, no refraction offset)

    [[meshes]]                # one entry per mesh file; required: file
    file = "meshes/floor.obj" # .obj (+ .mtl), .ply, .gltf, .glb
    name = "floor"            # for messages; default: the file
    material = "white"        # replaces every material of the file; default: the file's own
    translate = [0, 0, 0]     # placement: scale, then rotate, then translate ...
    rotate_deg = [0, 0, 0]    #   rotations about x, then y, then z (degrees, right-handed)
    scale = 1.0               #   or [sx, sy, sz]
    # matrix = [16 numbers]   # ... or a row-major 4x4 affine matrix instead of the three above

    [[lights]]                # an emitting mesh: every triangle emits `radiance`
    file = "light.obj"        # required, as for meshes
    radiance = [18.4, 14.0, 6.75]     # required
    two_sided = false         # emit on both sides
    name = "key"              # for messages; default: the file
    material = "white"        # the surface's BSDF; default: black diffuse
    # + translate / rotate_deg / scale / matrix as for meshes

    [[light]]                 # a light with no surface (at most 10 000); required: kind
    kind = "point"            # "point", "spot" or "directional" (Mitsuba's point, spot, directional)
    position = [0, 4, 0]      # point, spot: required
    intensity = [50, 50, 50]  # point, spot: W/sr per channel (one number is grey); default 1

    [[light]]
    kind = "spot"             # shines along direction (or from position towards look_at)
    position = [0, 4, 0]
    look_at = [0, 0, 0]       # or direction = [0, -1, 0]
    intensity = 200
    cutoff_deg = 20.0         # no light beyond this angle from the axis (0 < cutoff_deg <= 180)
    beam_width_deg = 15.0     # full intensity inside; linear in angle to 0 at the cutoff
                              #   (default 3/4 of the cutoff)
    [[light]]
    kind = "directional"      # a sun: light travelling along direction (or position -> look_at)
    direction = [-1, -2, -1]
    irradiance = [3, 3, 3]    # W/m^2 on a surface facing it (one number is grey); default 1
    angular_radius_deg = 0.27 # > 0: a disc of directions, soft shadows (0..89; default 0, sharp)

A scene needs at least one [[meshes]] or [[lights]] entry.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta, Struct

from ..errors import SceneError
from ..settings import RenderSettings
from .confine import SceneFiles
from .materials import CONDUCTOR_PRESETS, IOR_MAX, IOR_MIN, IOR_PRESETS, ior_value
from .types import CameraDesc, LightDesc, MeshData

SCENE_BYTES_MAX = 16 << 20  # a hand-written (or generated) scene file is kilobytes; 16 MiB is a mistake
TOML_DEPTH_MAX = 16  # tables and arrays inside each other: the format needs 4 (camera.keyframes[i].position)
ENTRIES_MAX = 100_000  # meshes + lights per scene; each is a file to open
MATERIALS_MAX = 100_000  # named materials per scene file
NAME_CHARS_MAX = 256  # names and paths are for humans and the file system
KEYFRAMES_MAX = 10_000  # camera keyframes per scene: more is a baked path, not keyframes
FRAME_MAX = 100_000  # jobs.FRAMES_PER_JOB_MAX: a frame number beyond is a typo
MESH_SUFFIXES = (".obj", ".ply", ".gltf", ".glb")
_EYE4, _EYE3 = np.eye(4), np.eye(3)
ETA_K_MAX = 100.0  # a conductor's complex index: measured metals stay below 15; beyond is a typo
PUNCTUAL_LIGHTS_MAX = 10_000  # [[light]] tables: each is a row the NEE pick searches; more is a baked cloud
SUN_RADIUS_DEG_MAX = 89.0  # scene.compile's bound: a disc of directions smaller than a hemisphere
SPOT_CUTOFF_DEG = 20.0  # Mitsuba's spot defaults: cutoff 20 degrees, beam width 3/4 of the cutoff
UP_PARALLEL_SIN_MIN = 1e-6  # |up x view| below this (unit vectors): up gives no roll, the frame is undefined

Name = Annotated[str, Meta(min_length=1, max_length=NAME_CHARS_MAX)]
NonNeg = Annotated[float, Meta(ge=0.0)]
Color = tuple[NonNeg, NonNeg, NonNeg]
Vec3 = tuple[float, float, float]


class CameraTable(Struct, forbid_unknown_fields=True, kw_only=True):
    position: Vec3 = CameraDesc.position
    look_at: Vec3 = CameraDesc.look_at
    up: Vec3 = CameraDesc.up
    fov_deg: Annotated[float, Meta(gt=0.0, lt=180.0)] = CameraDesc.fov_deg
    fov_axis: Literal["x", "y", "smaller", "larger"] = "smaller"
    aperture_radius: NonNeg = 0.0
    focus_distance: NonNeg = 0.0
    keyframes: Annotated[list[CameraKey], Meta(max_length=KEYFRAMES_MAX)] = []


Frame = Annotated[int, Meta(ge=0, le=FRAME_MAX)]


class CameraKey(Struct, forbid_unknown_fields=True, kw_only=True):
    frame: Frame
    position: Vec3 | None = None
    look_at: Vec3 | None = None
    up: Vec3 | None = None
    fov_deg: Annotated[float, Meta(gt=0.0, lt=180.0)] | None = None
    aperture_radius: NonNeg | None = None
    focus_distance: NonNeg | None = None


class AnimationTable(Struct, forbid_unknown_fields=True, kw_only=True):
    frames: tuple[Frame, Frame]


class EnvironmentTable(Struct, forbid_unknown_fields=True, kw_only=True):
    color: Color | None = None
    image: Name | None = None
    rotation_deg: Annotated[float, Meta(ge=-360.0, le=360.0)] = 0.0


class PunctualTable(Struct, forbid_unknown_fields=True, kw_only=True):
    """A [[light]] table: a point, spot or directional light (types.LightDesc has the meaning)."""

    kind: Literal["point", "spot", "directional"]
    name: Name | None = None
    position: Vec3 | None = None
    direction: Vec3 | None = None
    look_at: Vec3 | None = None
    # one number (grey) or [r, g, b], each >= 0: checked by punctual_light (msgspec's unions of
    # a constrained number and a constrained array misreport their errors)
    intensity: float | list[float] | None = None  # point, spot: W/sr
    irradiance: float | list[float] | None = None  # directional: W/m^2 on a surface facing the light
    cutoff_deg: Annotated[float, Meta(gt=0.0, le=180.0)] | None = None
    beam_width_deg: Annotated[float, Meta(ge=0.0, le=180.0)] | None = None
    angular_radius_deg: Annotated[float, Meta(ge=0.0, le=SUN_RADIUS_DEG_MAX)] | None = None


Ior = Annotated[float, Meta(ge=IOR_MIN, le=IOR_MAX)] | Annotated[str, Meta(max_length=NAME_CHARS_MAX)]
EtaK = Annotated[float, Meta(ge=0.0, le=ETA_K_MAX)]


class MaterialTable(Struct, forbid_unknown_fields=True, kw_only=True):
    type: Literal["diffuse", "conductor", "dielectric", "plastic"] = "diffuse"
    base_color: Color = (0.8, 0.8, 0.8)
    base_color_texture: Name | None = None
    roughness: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5
    emission: Color = (0.0, 0.0, 0.0)
    two_sided_emission: bool = False
    two_sided: bool = False
    conductor: Name | None = None  # conductor: a preset of scene.materials.CONDUCTOR_PRESETS
    fresnel: Literal["schlick", "complex", "none"] | None = None  # conductor
    eta: tuple[EtaK, EtaK, EtaK] | None = None  # conductor, complex Fresnel
    k: tuple[EtaK, EtaK, EtaK] | None = None
    ior: Ior | None = None  # dielectric, plastic: a number or a preset of scene.materials.IOR_PRESETS
    thin: bool | None = None  # dielectric

    def desc_fields(self, where: str, src: str) -> dict[str, Any]:
        """The MaterialDesc fields this table gives (all but name and texture), checked across
        keys: every key must belong to the material's type, and the Fresnel keys must agree."""
        kind = self.type
        for key, kinds in _KIND_KEYS.items():
            if getattr(self, key) is not None and kind not in kinds:
                raise SceneError(src, f"{where}: '{key}' is for {' and '.join(kinds)} materials, not {kind}")
        fields: dict[str, Any] = dict(
            kind=kind,
            base_color=tuple(self.base_color),
            roughness=self.roughness,
            emission=tuple(self.emission),
            two_sided_emission=self.two_sided_emission,
            two_sided=self.two_sided or kind == "dielectric",
            thin=bool(self.thin),
        )
        if self.ior is not None:
            ior = ior_value(self.ior)
            if ior is None:
                known = ", ".join(sorted(IOR_PRESETS))
                raise SceneError(src, f"{where}.ior: '{self.ior}' is not a known medium (known: {known})")
            if not IOR_MIN <= ior <= IOR_MAX:
                raise SceneError(src, f"{where}.ior: {ior} is outside {IOR_MIN}..{IOR_MAX}")
            fields["ior"] = ior
        if kind == "conductor":
            fresnel = self.fresnel
            if self.conductor is not None:
                preset = CONDUCTOR_PRESETS.get(self.conductor)
                if preset is None:
                    known = ", ".join(CONDUCTOR_PRESETS)
                    raise SceneError(
                        src, f"{where}.conductor: '{self.conductor}' is not known (known: {known})"
                    )
                if self.eta is not None or self.k is not None:
                    raise SceneError(src, f"{where}: give either conductor or eta and k, not both")
                fields["eta"], fields["k"] = preset
            elif self.eta is not None or self.k is not None:
                if self.eta is None or self.k is None:
                    raise SceneError(src, f"{where}: a complex index needs both eta and k")
                fields["eta"], fields["k"] = tuple(self.eta), tuple(self.k)
            has_index = "eta" in fields
            if fresnel is None:
                fresnel = "complex" if has_index else "schlick"
            if (fresnel == "complex") != has_index:
                problem = (
                    "fresnel 'complex' needs conductor or eta and k"
                    if not has_index
                    else (f"conductor / eta and k make no sense with fresnel '{fresnel}'")
                )
                raise SceneError(src, f"{where}: {problem}")
            fields["fresnel"] = fresnel
        return fields


_KIND_KEYS = {  # material keys that only some types take
    "conductor": ("conductor",),
    "fresnel": ("conductor",),
    "eta": ("conductor",),
    "k": ("conductor",),
    "ior": ("dielectric", "plastic"),
    "thin": ("dielectric",),
}


class _Placed(Struct, forbid_unknown_fields=True, kw_only=True):
    file: Name
    name: Name | None = None
    material: Name | None = None
    translate: Vec3 = (0.0, 0.0, 0.0)
    rotate_deg: Vec3 = (0.0, 0.0, 0.0)
    scale: float | Vec3 = 1.0
    matrix: Annotated[tuple[float, ...], Meta(min_length=16, max_length=16)] | None = None


class MeshEntry(_Placed, kw_only=True):
    pass


class LightEntry(_Placed, kw_only=True):
    radiance: Color
    two_sided: bool = False


class _SceneTables(Struct, forbid_unknown_fields=True, kw_only=True):
    render: dict[str, Any] = {}
    camera: CameraTable | None = None
    animation: AnimationTable | None = None
    environment: EnvironmentTable | None = None
    materials: Annotated[dict[str, Any], Meta(max_length=MATERIALS_MAX)] = {}
    meshes: Annotated[list[MeshEntry], Meta(max_length=ENTRIES_MAX)] = []
    lights: Annotated[list[LightEntry], Meta(max_length=ENTRIES_MAX)] = []
    light: Annotated[list[PunctualTable], Meta(max_length=PUNCTUAL_LIGHTS_MAX)] = []


@dataclass
class SceneFile:
    """A validated scene file. Paths are still as written; `base` is the directory they are relative to."""

    path: Path
    base: Path
    settings: RenderSettings
    camera: CameraDesc | None
    environment: EnvironmentTable
    materials: dict[str, MaterialTable]
    meshes: list[MeshEntry]
    lights: list[LightEntry]
    punctual: list[LightDesc] = field(default_factory=list)  # the [[light]] tables, checked
    camera_keys: list[tuple[int, CameraDesc]] = field(default_factory=list)  # (frame, camera), by frame
    frames: tuple[int, int] | None = None  # the default frame range, when the scene says
    matrices: list[np.ndarray] = field(default_factory=list)  # each entry's placement, as `entries()`

    def entries(self) -> list[tuple[str, MeshEntry | LightEntry]]:
        """(label for messages, entry) for every mesh and light, in file order."""
        return [(f"meshes[{i}]", e) for i, e in enumerate(self.meshes)] + [
            (f"lights[{i}]", e) for i, e in enumerate(self.lights)
        ]


def parse_scene_file(path: str | Path, *, files: SceneFiles | None = None) -> SceneFile:
    path = Path(path)
    src = str(path)
    files = files or SceneFiles.beside(path)
    data = files.read(path, SCENE_BYTES_MAX, "scene file", src)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SceneError(src, f"scene file is not UTF-8 text (byte {e.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SceneError(src, f"TOML syntax error: {e}") from None
    except RecursionError:
        raise SceneError(src, f"tables or arrays nested more deeply than {TOML_DEPTH_MAX} levels") from None
    _check_finite(raw, src)
    tables = _convert(raw, _SceneTables, "", src)
    materials = {}
    for mname, table in tables.materials.items():
        if len(mname) > NAME_CHARS_MAX:
            raise SceneError(src, f"materials: name longer than {NAME_CHARS_MAX} characters")
        materials[mname] = _convert(table, MaterialTable, f"materials.{mname}", src)
        materials[mname].desc_fields(f"materials.{mname}", src)  # checked now, used by load.py
    scene = SceneFile(
        path=path,
        base=path.parent,
        settings=_render_settings(tables.render, src),
        camera=None if tables.camera is None else camera_from_table(tables.camera, src),
        environment=tables.environment or EnvironmentTable(),
        materials=materials,
        meshes=tables.meshes,
        lights=tables.lights,
        punctual=[punctual_light(t, f"light[{i}]", src) for i, t in enumerate(tables.light)],
    )
    if tables.camera is not None and tables.camera.keyframes:
        scene.camera_keys = camera_keys(tables.camera, scene.camera, src)
    if tables.animation is not None:
        first, last = tables.animation.frames
        if last < first:
            raise SceneError(src, f"animation: frames [{first}, {last}]: the last comes before the first")
        scene.frames = (first, last)
    elif scene.camera_keys:
        scene.frames = (scene.camera_keys[0][0], scene.camera_keys[-1][0])
    if not scene.meshes and not scene.lights:
        raise SceneError(src, "the scene has no [[meshes]] or [[lights]]")
    defined = ", ".join(sorted(materials)) or "none"
    for label, e in scene.entries():
        if Path(e.file).suffix.lower() not in MESH_SUFFIXES:
            raise SceneError(
                src, f"{label}.file: '{e.file}' is not a mesh file (expected {', '.join(MESH_SUFFIXES)})"
            )
        if e.material is not None and e.material not in materials:
            raise SceneError(
                src, f"{label} ({e.file}): material '{e.material}' is not defined (defined: {defined})"
            )
        scene.matrices.append(entry_matrix(e, f"{label} ({e.file})", src))  # validates the placement
    return scene


_KEYS_OF_KIND = {
    "point": {"position", "intensity"},
    "spot": {"position", "direction", "look_at", "intensity", "cutoff_deg", "beam_width_deg"},
    "directional": {"position", "direction", "look_at", "irradiance", "angular_radius_deg"},
}


def punctual_light(t: PunctualTable, label: str, src: str) -> LightDesc:
    """A [[light]] table as a LightDesc; a key that does not apply to its kind is an error."""
    what = f"{label} ({t.kind})"
    for key in PunctualTable.__struct_fields__:
        if key not in ("kind", "name") and getattr(t, key) is not None and key not in _KEYS_OF_KIND[t.kind]:
            users = [k for k, keys in _KEYS_OF_KIND.items() if key in keys]
            raise SceneError(src, f"{what}: `{key}` is for {' and '.join(users)} lights, not {t.kind}")

    def rgb(v, key: str) -> tuple[float, float, float]:
        if v is None:
            return (1.0, 1.0, 1.0)
        c = (float(v),) * 3 if isinstance(v, float | int) else tuple(float(x) for x in v)
        if len(c) != 3 or min(c) < 0:
            raise SceneError(src, f"{what}: {key} must be a number >= 0 or [r, g, b] of them, got {v}")
        return c

    def unit(v, key: str):
        n = math.sqrt(sum(c * c for c in v))
        if not n > 0:
            raise SceneError(src, f"{what}: {key} is the zero vector")
        return tuple(c / n for c in v)

    direction = (0.0, -1.0, 0.0)
    if t.kind != "point":
        if t.direction is not None and t.look_at is not None:
            raise SceneError(src, f"{what}: give either direction or look_at (with position), not both")
        if t.look_at is not None:
            if t.position is None:
                raise SceneError(src, f"{what}: look_at needs a position to look from")
            direction = unit(np.subtract(t.look_at, t.position).tolist(), "look_at - position")
        elif t.direction is not None:
            direction = unit(t.direction, "direction")
        else:
            raise SceneError(src, f"{what}: missing required key direction (or look_at with position)")
    if t.kind in ("point", "spot") and t.position is None:
        raise SceneError(src, f"{what}: missing required key position")
    light = LightDesc(kind=t.kind, position=t.position or (0.0, 0.0, 0.0), direction=direction)
    if t.kind == "directional":
        light.intensity = rgb(t.irradiance, "irradiance")
        light.angular_radius_deg = t.angular_radius_deg or 0.0
    else:
        light.intensity = rgb(t.intensity, "intensity")
    if t.kind == "spot":
        light.cutoff_deg = t.cutoff_deg if t.cutoff_deg is not None else SPOT_CUTOFF_DEG
        light.beam_width_deg = t.beam_width_deg if t.beam_width_deg is not None else 0.75 * light.cutoff_deg
        if light.beam_width_deg > light.cutoff_deg:
            problem = f"beam_width_deg {light.beam_width_deg} is wider than cutoff_deg {light.cutoff_deg}"
            raise SceneError(src, f"{what}: {problem}")
    return light


def camera_from_table(t: CameraTable, src: str) -> CameraDesc:
    cam = CameraDesc(
        position=t.position,
        look_at=t.look_at,
        up=t.up,
        fov_deg=t.fov_deg,
        fov_axis=t.fov_axis,
        aperture_radius=t.aperture_radius,
        focus_distance=t.focus_distance,
    )
    check_camera(cam, src)
    return cam


def camera_keys(t: CameraTable, base: CameraDesc, src: str) -> list[tuple[int, CameraDesc]]:
    """The keyframes as whole cameras (unset fields from `base`), checked each."""
    keys: list[tuple[int, CameraDesc]] = []
    for i, k in enumerate(t.keyframes):
        if keys and k.frame <= keys[-1][0]:
            raise SceneError(src, f"camera.keyframes[{i}]: frame {k.frame} does not come after {keys[-1][0]}")
        fields = {f: getattr(k, f) for f in CameraKey.__struct_fields__ if f != "frame"}
        cam = replace(base, **{f: v for f, v in fields.items() if v is not None})
        check_camera(cam, f"{src}: camera.keyframes[{i}] (frame {k.frame})")
        keys.append((k.frame, cam))
    return keys


def check_camera(cam: CameraDesc, src: str) -> None:
    """The camera frame must exist: a view direction, and an up vector that is not along it."""
    vals = [*cam.position, *cam.look_at, *cam.up, cam.fov_deg, cam.aperture_radius, cam.focus_distance]
    if not all(math.isfinite(v) for v in vals):
        raise SceneError(src, "camera: every value must be finite")
    if not 0.0 < cam.fov_deg < 180.0:
        raise SceneError(src, f"camera: fov_deg {cam.fov_deg} is outside (0, 180)")
    if cam.aperture_radius < 0 or cam.focus_distance < 0:
        raise SceneError(src, "camera: aperture_radius and focus_distance must be >= 0")
    view = np.subtract(cam.look_at, cam.position, dtype=np.float64)
    dist = float(np.linalg.norm(view))
    if dist == 0.0:
        raise SceneError(src, f"camera: position and look_at are the same point {tuple(cam.position)}")
    up_len = float(np.linalg.norm(cam.up))
    if up_len == 0.0:
        raise SceneError(src, "camera: up is the zero vector")
    if np.linalg.norm(np.cross(view / dist, np.asarray(cam.up) / up_len)) < UP_PARALLEL_SIN_MIN:
        raise SceneError(src, f"camera: up {tuple(cam.up)} is parallel to the view direction")


def entry_matrix(e: MeshEntry | LightEntry, label: str, src: str) -> np.ndarray:
    """The entry's 4x4 placement: `matrix`, or translate @ Rz @ Ry @ Rx @ scale."""
    trs_given = e.translate != (0.0, 0.0, 0.0) or e.rotate_deg != (0.0, 0.0, 0.0) or e.scale != 1.0
    if e.matrix is not None:
        if trs_given:
            raise SceneError(src, f"{label}: give either matrix or translate/rotate_deg/scale, not both")
        m = np.array(e.matrix, np.float64).reshape(4, 4)
        if not np.array_equal(m[3], [0.0, 0.0, 0.0, 1.0]):
            raise SceneError(src, f"{label}: matrix must be affine (its last row 0 0 0 1)")
        det = float(np.linalg.det(m[:3, :3]))
    else:
        s = (e.scale,) * 3 if isinstance(e.scale, float) else e.scale
        m = np.eye(4)
        if e.rotate_deg == (0.0, 0.0, 0.0):  # the usual case, and a scene of 100,000 entries: no trig
            m[0, 0], m[1, 1], m[2, 2] = s
        else:
            rx, ry, rz = np.radians(e.rotate_deg)
            cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
            r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
            r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
            m[:3, :3] = r_z @ r_y @ r_x @ np.diag(s)
        m[:3, 3] = e.translate
        det = s[0] * s[1] * s[2]  # a rotation's determinant is 1
    if not abs(det) >= 1e-300:
        raise SceneError(src, f"{label}: the placement is singular (a zero scale?)")
    return m


def apply_transform(mesh: MeshData, m: np.ndarray) -> MeshData:
    """The mesh placed by the affine 4x4 `m`: normals by the inverse transpose, and the winding
    flipped when `m` mirrors, so the face normal keeps pointing out of the same side."""
    if np.array_equal(m, _EYE4):
        return mesh
    lin = m[:3, :3]
    moved_only = np.array_equal(lin, _EYE3)  # a translation (the usual placement): no products to take
    p64 = mesh.positions.astype(np.float64)
    positions = ((p64 if moved_only else p64 @ lin.T) + m[:3, 3]).astype(np.float32)
    normals = mesh.normals
    if normals is not None:
        n = normals.astype(np.float64)
        if not moved_only:
            n = n @ np.linalg.inv(lin)
        length = np.linalg.norm(n, axis=1, keepdims=True)
        normals = np.divide(n, length, out=np.zeros_like(n), where=length > 0).astype(np.float32)
    indices = mesh.indices
    if not moved_only and np.linalg.det(lin) < 0:
        indices = np.ascontiguousarray(indices[:, [0, 2, 1]])
    return replace(mesh, positions=positions, normals=normals, indices=indices)


# ----------------------------------------------------------------------------------- helpers


def _render_settings(render: dict[str, Any], src: str) -> RenderSettings:
    render = dict(render)
    if "resolution" in render:
        res = render.pop("resolution")
        if "width" in render or "height" in render:
            raise SceneError(src, "render: give either resolution or width/height, not both")
        if not (isinstance(res, list) and len(res) == 2 and all(type(v) is int for v in res)):
            raise SceneError(src, f"render.resolution: expected [width, height] as two integers, got {res!r}")
        render["width"], render["height"] = res
    return _convert(render, RenderSettings, "render", src)


def _convert(obj: Any, typ: type, where: str, src: str):
    try:
        return msgspec.convert(obj, type=typ)
    except msgspec.ValidationError as e:
        msg, sep, at = str(e).rpartition(" - at `")
        if not sep:
            msg, at = str(e), "$`"
        path = where + at[1:-1] if at.startswith("$") else at[:-1]
        path = path.lstrip(".")
        msg = msg.replace("Object contains unknown field", "unknown key")
        msg = msg.replace("Object missing required field", "missing required key")
        raise SceneError(src, f"{path or 'top level'}: {msg}") from None


def _check_finite(raw: Any, src: str) -> None:
    """TOML allows nan and inf; no value in a scene file may be either. Nesting deeper than
    TOML_DEPTH_MAX is refused here too (iteratively: no recursion to run out of)."""
    stack: list[tuple[Any, Any, int]] = [(raw, None, 0)]  # (value, where, depth); where is built lazily
    while stack:
        obj, where, depth = stack.pop()
        if isinstance(obj, float):
            if not math.isfinite(obj):
                raise SceneError(src, f"{_where(where) or 'top level'}: {obj} is not a finite number")
        elif isinstance(obj, dict | list):
            if depth >= TOML_DEPTH_MAX:
                problem = f"tables or arrays nested more deeply than {TOML_DEPTH_MAX} levels"
                raise SceneError(src, f"{_where(where)[:80]}: {problem}")
            items = obj.items() if isinstance(obj, dict) else enumerate(obj)
            is_dict = isinstance(obj, dict)
            for k, v in items:
                if isinstance(v, float | dict | list):
                    stack.append((v, (where, k, is_dict), depth + 1))


def _where(where) -> str:
    """`meshes[3].translate` from the (parent, key, parent is a table) chain."""
    parts = []
    while where is not None:
        where, k, is_dict = where
        parts.append(f".{k}" if is_dict else f"[{k}]")
    return "".join(reversed(parts)).lstrip(".")

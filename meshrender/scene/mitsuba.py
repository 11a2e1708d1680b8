"""Mitsuba 3 XML scene files (the subset below) to a `LoadedScene`, so one file renders in both.

How: the file is read through `SceneFiles` (a regular file within `XML_BYTES_MAX`) and parsed
by defusedxml's expat parser with DTDs, entity declarations and external references refused (no
billion laughs, no XXE), into a small tree of `_Node`s that remember their line; the element
count and the nesting depth are checked as each start tag arrives, before anything is built.
`<default>` parameters are then substituted into every attribute (`$spp`, bounded in length),
and the tree is walked: each object (`shape`, `bsdf`, `emitter`, `sensor`, `film`, `rfilter`,
`sampler`, `integrator`) takes the properties it knows from a `_Props`, and any property,
nested object or plugin type left over is a `SceneError` naming the element and its line, so a
scene that cannot be rendered as Mitsuba would is refused instead of rendered wrong. Numbers
must be finite and at most `NUMBER_ABS_MAX`. Every file a shape or envmap names is confined to
the XML's folder tree like a TOML scene's, and all missing ones are listed in one error first.

The subset, in Mitsuba's terms and with Mitsuba's defaults:
  shapes     obj, ply (our own loaders; the OBJ's MTL is ignored, as Mitsuba does; without
             `face_normals` a mesh without normals gets angle-weighted vertex normals, as
             Mitsuba computes them), sphere (`center`, `radius`: an icosphere of
             SPHERE_SUBDIVISIONS levels with exact vertex normals), rectangle, cube; every shape
             takes `to_world`, `flip_normals`, one bsdf (nested or `ref`) and one `area` emitter.
             A shape without a bsdf is diffuse 0.5, as in Mitsuba.
  transforms translate, rotate, scale, matrix, lookat, each applied after the ones before it.
  bsdfs      diffuse, conductor/roughconductor (`material` presets, `eta`/`k`, `alpha`), dielectric/
             roughdielectric/thindielectric (`int_ior`/`ext_ior`, numbers or names), plastic/
             roughplastic, twosided; `distribution` must be ggx where given (Mitsuba's default,
             beckmann, is rendered as GGX with a warning when the file says nothing).
  emitters   area, envmap (`filename`, `scale`, `to_world` a rotation about +y), constant, point,
             spot, directional.
  sensor     perspective or thinlens: `fov`, `fov_axis`, `to_world` (a rigid motion); hdrfilm
             `width`/`height` with a box rfilter (no rfilter: Mitsuba's gaussian, warned about);
             sampler `sample_count` (and `seed`); integrator path `max_depth` (-1: DEPTH_MAX) and
             `rr_depth`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from ..errors import MissingAssetsError, SceneError
from ..settings import DEPTH_MAX, RES_PX_MAX, SPP_MAX, RenderSettings
from . import obj as obj_format
from . import ply as ply_format
from .confine import SceneFiles
from .file import ENTRIES_MAX, apply_transform
from .images import TextureCache, srgb_to_linear
from .materials import CONDUCTOR_PRESETS, IOR_MAX, IOR_MIN, IOR_PRESETS  # Mitsuba's names and values
from .types import CameraDesc, EnvironmentDesc, LightDesc, LoadedScene, MaterialDesc, MeshData, TextureImage

XML_BYTES_MAX = 16 << 20  # a hand-written or exported scene is kilobytes; meshes live in their own files
XML_ELEMENTS_MAX = 1 << 16  # thousands of shapes with their properties; a parsed element costs ~0.4 KB
XML_DEPTH_MAX = 16  # scene > shape > bsdf(twosided) > bsdf > rgb is 5; real files stay under 8
VALUE_CHARS_MAX = 4096  # one attribute after `$` substitution: a 4x4 matrix is ~200 characters
DEFAULTS_MAX = 4096  # <default> parameters in one file
NUMBER_ABS_MAX = 1e30  # any number in the file: beyond this a product overflows float32 in the kernel
GENERATED_TRIS_MAX = 1 << 23  # made here (400 spheres, ~230 MB): more is a file written to fill memory
SPHERE_SUBDIVISIONS = 5  # icosphere levels: 20480 triangles; chords sag < 2.4e-4 radius (< 0.13 px at
#                          a 1080p frame's full height), vertex normals are exact
DEFAULT_REFLECTANCE = 0.5  # Mitsuba's diffuse default, and its default BSDF for a shape without one
ORTHONORMAL_TOL = 1e-4  # a camera or envmap rotation may be off orthonormal by float noise only

_OBJECTS = ("shape", "bsdf", "emitter", "sensor", "film", "rfilter", "sampler", "integrator")
_PROPERTIES = ("integer", "float", "boolean", "string", "rgb", "spectrum", "point", "vector", "transform")
_UNSUPPORTED = {
    "texture": "textures are not supported (give a constant rgb)",
    "include": "<include> is not supported (one file per scene)",
    "medium": "participating media are not supported",
    "phase": "phase functions are not supported",
    "volume": "volumes are not supported",
    "alias": "<alias> is not supported",
    "path": "<path> is not supported",
}
_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_SPLIT = re.compile(r"[,\s]+")


@dataclass(slots=True)
class _Node:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Node] = field(default_factory=list)

    def label(self) -> str:
        t = self.attrs.get("type")
        name = self.attrs.get("name")
        shown = f"<{self.tag}" + (f' type="{t}"' if t else "") + (f' name="{name}"' if name else "") + ">"
        return f"line {self.line}: {shown[:120]}"


class _Error(Exception):
    """A problem at a node; turned into a SceneError naming the file."""

    def __init__(self, node: _Node | None, problem: str):
        self.node, self.problem = node, problem


# ----------------------------------------------------------------------------------- parsing


class _Builder:
    """The parser's target: `_Node`s with lines; the budgets are checked per start tag."""

    def __init__(self) -> None:
        self.parser = None  # the expat parser, for line numbers
        self.stack: list[_Node] = []
        self.root: _Node | None = None
        self.count = 0

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        line = self.parser.CurrentLineNumber
        self.count += 1
        if self.count > XML_ELEMENTS_MAX:
            raise _Error(None, f"line {line}: more than {XML_ELEMENTS_MAX} elements")
        if len(self.stack) >= XML_DEPTH_MAX:
            raise _Error(None, f"line {line}: elements nested more deeply than {XML_DEPTH_MAX} levels")
        for k, v in attrs.items():
            if len(v) > VALUE_CHARS_MAX:
                raise _Error(
                    None,
                    f"line {line}: <{tag[:40]}> attribute '{k[:40]}' is longer than {VALUE_CHARS_MAX} chars",
                )
        node = _Node(tag, dict(attrs), line)
        if self.stack:
            self.stack[-1].children.append(node)
        else:
            self.root = node
        self.stack.append(node)

    def end(self, tag: str) -> None:
        self.stack.pop()

    def data(self, text: str) -> None:
        pass  # Mitsuba's format has no text content; whitespace between tags is all there is

    def close(self) -> _Node | None:
        return self.root


def _parse_xml(data: bytes, src: str) -> _Node:
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import DefusedXMLParser, ParseError

    builder = _Builder()
    parser = DefusedXMLParser(target=builder, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    builder.parser = parser.parser
    try:
        parser.feed(data)
        root = parser.close()
    except _Error as e:
        raise SceneError(src, e.problem) from None
    except DefusedXmlException as e:
        kind = type(e).__name__.replace("Forbidden", "")
        line = getattr(parser.parser, "CurrentLineNumber", "?")
        raise SceneError(
            src, f"line {line}: XML {kind} declarations are not allowed in a scene file"
        ) from None
    except ParseError as e:
        raise SceneError(src, f"XML syntax error: {e}") from None
    except RecursionError:  # not reached by expat, kept so no traceback can escape
        raise SceneError(src, "XML nested too deeply") from None
    if root is None:
        raise SceneError(src, "no XML element in the file")
    return root


def _substitute(root: _Node, params: dict[str, str], src: str) -> None:
    """Replace `$name` in every attribute by its parameter (Mitsuba's `<default>` / `-D`)."""
    stack = [root]
    while stack:
        node = stack.pop()
        for k, v in node.attrs.items():
            if "$" not in v:
                continue
            out, pos = [], 0
            size = 0
            for m in _PARAM.finditer(v):
                name = m.group(1)
                if name not in params:
                    raise SceneError(
                        src, f"{node.label()}: parameter ${name} has no <default> and no value given"
                    )
                piece = v[pos : m.start()] + params[name]
                size += len(piece)
                if size > VALUE_CHARS_MAX:
                    raise SceneError(
                        src, f"{node.label()}: attribute '{k}' is longer than {VALUE_CHARS_MAX} characters"
                    )
                out.append(piece)
                pos = m.end()
            out.append(v[pos:])
            node.attrs[k] = "".join(out)
        stack.extend(node.children)


# --------------------------------------------------------------------------------- properties


def _number(text: str, node: _Node, what: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise _Error(node, f"{what}: '{text[:40]}' is not a number") from None
    if not math.isfinite(x) or abs(x) > NUMBER_ABS_MAX:
        raise _Error(node, f"{what}: {text[:40]} is not a finite number of magnitude <= {NUMBER_ABS_MAX:g}")
    return x


def _numbers(text: str, node: _Node, what: str) -> list[float]:
    parts = [p for p in _SPLIT.split(text.strip()) if p]
    return [_number(p, node, what) for p in parts]


def _xyz(node: _Node, default: float) -> tuple[float, float, float]:
    """value="x, y, z" or x=, y=, z= attributes (missing ones `default`)."""
    if "value" in node.attrs:
        v = _numbers(node.attrs["value"], node, "value")
        if len(v) == 1:
            return (v[0],) * 3
        if len(v) != 3:
            raise _Error(node, f"expected 3 numbers, got {len(v)}")
        return (v[0], v[1], v[2])
    return tuple(_number(node.attrs.get(a, str(default)), node, a) for a in "xyz")  # type: ignore[return-value]


class _Props:
    """The properties and nested objects of one object element; handlers take what they know."""

    def __init__(self, node: _Node):
        self.node = node
        self.props: dict[str, _Node] = {}
        self.objects: list[_Node] = []
        for c in node.children:
            if c.tag in _PROPERTIES:
                name = c.attrs.get("name")
                if not name:
                    raise _Error(c, "a property needs a name")
                if name in self.props:
                    raise _Error(c, f"property '{name}' given twice (first at line {self.props[name].line})")
                self.props[name] = c
            elif c.tag in _OBJECTS or c.tag == "ref":
                self.objects.append(c)
            elif c.tag in _UNSUPPORTED:
                raise _Error(c, _UNSUPPORTED[c.tag])
            else:
                raise _Error(c, f"unknown element <{c.tag}> inside <{node.tag}>")

    def _take(self, name: str, tags: tuple[str, ...]) -> _Node | None:
        n = self.props.pop(name, None)
        if n is not None and n.tag not in tags:
            raise _Error(n, f"'{name}' must be given as {' or '.join('<' + t + '>' for t in tags)}")
        return n

    def has(self, name: str) -> bool:
        return name in self.props

    def value(self, n: _Node) -> str:
        if "value" not in n.attrs:
            raise _Error(n, "missing the value attribute")
        return n.attrs["value"]

    def float(self, name: str, default: float | None = None) -> float:
        n = self._take(name, ("float", "integer"))
        if n is None:
            if default is None:
                raise _Error(self.node, f"'{name}' is required")
            return default
        return _number(self.value(n), n, name)

    def int(self, name: str, default: int) -> int:
        n = self._take(name, ("integer",))
        if n is None:
            return default
        text = self.value(n).strip()
        if not re.fullmatch(r"[+-]?\d{1,10}", text):
            raise _Error(n, f"{name}: '{text[:40]}' is not an integer")
        return int(text)

    def bool(self, name: str, default: bool) -> bool:
        n = self._take(name, ("boolean",))
        if n is None:
            return default
        text = self.value(n).strip().lower()
        if text not in ("true", "false"):
            raise _Error(n, f"{name}: '{text[:40]}' is not true or false")
        return text == "true"

    def string(self, name: str, default: str | None = None) -> str:
        n = self._take(name, ("string",))
        if n is None:
            if default is None:
                raise _Error(self.node, f"'{name}' is required")
            return default
        return self.value(n)

    def color(self, name: str, default: float | tuple) -> tuple[float, float, float]:
        n = self.props.get(name)
        if n is None:
            return (default,) * 3 if isinstance(default, float | int) else tuple(default)
        if n.tag in ("bsdf", "texture"):
            raise _Error(n, "textures are not supported (give a constant rgb)")
        n = self._take(name, ("rgb", "spectrum", "float", "integer"))
        if n.tag == "spectrum" and ("filename" in n.attrs or ":" in n.attrs.get("value", "")):
            raise _Error(n, f"{name}: only a constant spectrum (one number) is supported; give an rgb")
        v = _numbers(self.value(n), n, name)
        if n.tag in ("spectrum", "float", "integer") and len(v) != 1:
            raise _Error(n, f"{name}: expected one number, got {len(v)}")
        if len(v) == 1:
            v = v * 3
        if len(v) != 3:
            raise _Error(n, f"{name}: expected 3 numbers (r, g, b), got {len(v)}")
        if min(v) < 0:
            raise _Error(n, f"{name}: {tuple(v)} must be >= 0")
        return (v[0], v[1], v[2])

    def point(
        self, name: str, default: tuple[float, float, float] | None
    ) -> tuple[float, float, float] | None:
        n = self._take(name, ("point", "vector"))
        return default if n is None else _xyz(n, 0.0)

    def transform(self, name: str) -> np.ndarray | None:
        n = self._take(name, ("transform",))
        return None if n is None else _transform(n)

    def ior(self, name: str, default: str) -> float:
        n = self._take(name, ("float", "integer", "string"))
        text = default if n is None else self.value(n)
        if n is not None and n.tag != "string":
            x = _number(text, n, name)
        else:
            key = text.strip().lower()
            if key not in IOR_PRESETS:
                where = n or self.node
                names = ", ".join(IOR_PRESETS)
                raise _Error(where, f"{name}: unknown index of refraction '{text[:40]}' (known: {names})")
            x = IOR_PRESETS[key]
        if not 1.0 <= x <= 10.0:
            raise _Error(n or self.node, f"{name}: {x} is outside 1..10")
        return x

    def finish(self, allow_objects: bool = False) -> None:
        """Every property taken; anything left is not supported."""
        for name, n in self.props.items():
            raise _Error(n, f"parameter '{name}' of {self.node.label()} is not supported")
        if not allow_objects:
            for c in self.objects:
                raise _Error(c, f"<{c.tag}> inside {self.node.label()} is not supported")


# ------------------------------------------------------------------------------- transforms


def _transform(node: _Node) -> np.ndarray:
    """`to_world`: each child applied after the previous ones (M = op @ M)."""
    m = np.eye(4)
    for op in node.children:
        a = op.attrs
        if op.tag == "translate":
            t = np.eye(4)
            t[:3, 3] = _xyz(op, 0.0)
        elif op.tag == "scale":
            s = _xyz(op, 1.0)
            t = np.diag([*s, 1.0])
        elif op.tag == "rotate":
            axis = np.array(_xyz(op, 0.0))
            if "angle" not in a:
                raise _Error(op, "rotate needs an angle (degrees)")
            angle = math.radians(_number(a["angle"], op, "angle"))
            length = float(np.linalg.norm(axis))
            if length == 0.0:
                raise _Error(op, "rotate needs a non-zero axis")
            t = np.eye(4)
            t[:3, :3] = _rotation(axis / length, angle)
        elif op.tag == "matrix":
            v = _numbers(a.get("value", ""), op, "value")
            if len(v) == 16:
                t = np.array(v).reshape(4, 4)
                if not np.allclose(t[3], [0, 0, 0, 1]):
                    raise _Error(op, "matrix must be affine (its last row 0 0 0 1)")
            elif len(v) == 9:
                t = np.eye(4)
                t[:3, :3] = np.array(v).reshape(3, 3)
            else:
                raise _Error(op, f"matrix needs 16 (or 9) numbers, got {len(v)}")
        elif op.tag == "lookat":
            t = _lookat(op)
        else:
            raise _Error(
                op, f"<{op.tag}> is not a transform operation (translate, rotate, scale, matrix, lookat)"
            )
        m = t @ m
    if not abs(float(np.linalg.det(m[:3, :3]))) >= 1e-30:
        raise _Error(node, "the transform is singular (a zero scale?)")
    return m


def _rotation(k: np.ndarray, angle: float) -> np.ndarray:
    """Right-handed rotation by `angle` radians about the unit axis `k` (Rodrigues)."""
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def _lookat(op: _Node) -> np.ndarray:
    """Mitsuba's look_at: columns left = up x dir, up' = dir x left, dir, origin."""
    pts = {}
    for k in ("origin", "target", "up"):
        if k not in op.attrs:
            raise _Error(op, f"lookat needs {k}")
        v = _numbers(op.attrs[k], op, k)
        if len(v) != 3:
            raise _Error(op, f"lookat {k}: expected 3 numbers")
        pts[k] = np.array(v)
    d = pts["target"] - pts["origin"]
    if np.linalg.norm(d) == 0.0:
        raise _Error(op, "lookat: origin and target are the same point")
    d = d / np.linalg.norm(d)
    left = np.cross(pts["up"], d)
    if np.linalg.norm(left) < 1e-9:
        raise _Error(op, "lookat: up is parallel to the view direction")
    left /= np.linalg.norm(left)
    up = np.cross(d, left)
    t = np.eye(4)
    t[:3, 0], t[:3, 1], t[:3, 2], t[:3, 3] = left, up, d, pts["origin"]
    return t


def _rigid(m: np.ndarray, node: _Node, what: str) -> None:
    r = m[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=ORTHONORMAL_TOL) or np.linalg.det(r) < 0:
        raise _Error(node, f"{what}: to_world must be a rotation and translation (no scale or mirror)")


# ------------------------------------------------------------------------------------ shapes


def _icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-sphere vertices and counter-clockwise (seen from outside) triangles."""
    t = (1.0 + 5.0**0.5) / 2.0
    v = np.array(
        [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
         (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)], np.float64)  # fmt: skip
    f = np.array(
        [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
         (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
         (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)], np.int64)  # fmt: skip
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for _ in range(level):
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        edges = np.concatenate([np.stack([a, b], 1), np.stack([b, c], 1), np.stack([c, a], 1)])
        uniq, inv = np.unique(np.sort(edges, axis=1), axis=0, return_inverse=True)
        mid = v[uniq[:, 0]] + v[uniq[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        ab, bc, ca = (inv.reshape(-1) + len(v)).reshape(3, -1)
        v = np.concatenate([v, mid])
        f = np.concatenate([np.stack(x, 1) for x in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    return v, f


_SPHERE_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _sphere(center, radius: float) -> MeshData:
    if SPHERE_SUBDIVISIONS not in _SPHERE_CACHE:
        _SPHERE_CACHE[SPHERE_SUBDIVISIONS] = _icosphere(SPHERE_SUBDIVISIONS)
    v, f = _SPHERE_CACHE[SPHERE_SUBDIVISIONS]
    p = np.asarray(center) + radius * v
    n = v if radius > 0 else -v
    return _mesh("sphere", p, f, n)


def _rectangle() -> MeshData:
    p = np.array([(-1, -1, 0), (1, -1, 0), (1, 1, 0), (-1, 1, 0)], np.float64)
    return _mesh("rectangle", p, np.array([(0, 1, 2), (0, 2, 3)]), None)


def _cube() -> MeshData:
    ps, fs = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            n = np.zeros(3)
            n[axis] = sign
            u = np.zeros(3)
            u[(axis + 1) % 3] = 1.0
            w = np.cross(n, u)  # u x w = n: (-u-w, u-w, u+w, -u+w) is counter-clockwise seen from n
            k = len(ps)
            ps += [n - u - w, n + u - w, n + u + w, n - u + w]
            fs += [(k, k + 1, k + 2), (k, k + 2, k + 3)]
    return _mesh("cube", np.array(ps), np.array(fs), None)


def _mesh(name: str, p: np.ndarray, f: np.ndarray, n: np.ndarray | None) -> MeshData:
    return MeshData(
        name=name,
        positions=np.ascontiguousarray(p, np.float32),
        indices=np.ascontiguousarray(f, np.int32),
        material_ids=np.zeros(len(f), np.int32),
        materials=[],
        normals=None if n is None else np.ascontiguousarray(n, np.float32),
    )


def vertex_normals(positions: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Angle-weighted vertex normals (Thuermer and Wuethrich 1998), what Mitsuba computes for a
    mesh that has none; a vertex of degenerate triangles only gets (0, 0, 0) (load repairs it),
    one no triangle uses gets +z (PLY scans often carry such vertices)."""
    p = positions.astype(np.float64)
    tri = p[indices]  # (T, 3, 3)
    face = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(face, axis=1, keepdims=True)
    face = np.divide(face, length, out=np.zeros_like(face), where=length > 0)
    acc = np.zeros_like(p)
    for i in range(3):
        e1 = tri[:, (i + 1) % 3] - tri[:, i]
        e2 = tri[:, (i + 2) % 3] - tri[:, i]
        l1 = np.linalg.norm(e1, axis=1)
        l2 = np.linalg.norm(e2, axis=1)
        cos = np.einsum("ij,ij->i", e1, e2) / np.maximum(l1 * l2, 1e-300)
        angle = np.arccos(np.clip(cos, -1.0, 1.0))
        for axis in range(3):
            acc[:, axis] += np.bincount(indices[:, i], weights=face[:, axis] * angle, minlength=len(p))
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    out = np.divide(acc, length, out=np.zeros_like(acc), where=length > 0)
    out[np.bincount(indices.reshape(-1), minlength=len(p)) == 0] = (0.0, 0.0, 1.0)  # unused: never shaded
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------- loader


class _Loader:
    def __init__(self, path: Path, files: SceneFiles, params: dict[str, str], frame, tris_max: int | None):
        self.path = path
        self.frame = frame  # meshes -> the camera of a scene without a sensor
        self.tris_max = tris_max
        self.src = str(path)
        self.files = files
        self.params = dict(params)
        self.warnings: list[str] = []
        self.bsdfs: dict[str, MaterialDesc] = {}  # by id, each parsed once
        self.resolving: set[str] = set()  # ids being parsed: a ref cycle is an error, not a RecursionError
        self.ids: dict[str, _Node] = {}
        self.meshes: list[MeshData] = []
        self.lights: list[LightDesc] = []
        self.environment: EnvironmentDesc | None = None
        self.env_node: _Node | None = None
        self.camera: CameraDesc | None = None
        self.settings: dict = {}
        self.textures = TextureCache(files)
        self.mesh_files: dict[tuple[str, bool], MeshData] = {}  # (real path, face_normals): each read once
        self.tris = self.generated_tris = 0

    def warn(self, node: _Node, text: str) -> None:
        self.warnings.append(f"{self.src}: {node.label()}: {text}")

    def file(self, node: _Node, props: _Props) -> Path:
        name = props.string("filename")
        if "\0" in name or len(name) > 1024:
            raise _Error(node, "filename: not a usable file name")
        return self.path.parent / name

    # -- the scene ---------------------------------------------------------------------------

    def load(self, root: _Node) -> LoadedScene:
        if root.tag != "scene":
            raise _Error(root, f"the root element is <{root.tag}>, not <scene>")
        version = root.attrs.get("version", "")
        if not re.fullmatch(r"[23]\.\d+\.\d+", version):
            raise _Error(
                root,
                f"version '{version[:20]}': this reads Mitsuba 2 and 3 scene files (version 2.x.y or 3.x.y)",
            )
        defaults = [c for c in root.children if c.tag == "default"]
        if len(defaults) > DEFAULTS_MAX:
            raise _Error(root, f"more than {DEFAULTS_MAX} <default> parameters")
        for d in defaults:
            if "name" not in d.attrs or "value" not in d.attrs:
                raise _Error(d, "<default> needs name and value")
            if len(d.attrs["value"]) > VALUE_CHARS_MAX:
                raise _Error(d, f"<default> value longer than {VALUE_CHARS_MAX} characters")
            self.params.setdefault(d.attrs["name"], d.attrs["value"])
        _substitute(root, self.params, self.src)
        body = [c for c in root.children if c.tag != "default"]
        self._check_missing(body)
        for c in body:
            if "id" in c.attrs:
                if c.attrs["id"] in self.ids:
                    raise _Error(
                        c,
                        f"id '{c.attrs['id']}' is used twice (first at line {self.ids[c.attrs['id']].line})",
                    )
                self.ids[c.attrs["id"]] = c
        shapes = 0
        for c in body:
            if c.tag == "bsdf":
                if "id" not in c.attrs:
                    self.bsdf(c)  # for its errors
                    self.warn(c, "a top-level bsdf without an id is never used")
                elif c.attrs["id"] not in self.bsdfs:  # not yet parsed for a ref ahead of it
                    self.resolving.add(c.attrs["id"])
                    self.bsdfs[c.attrs["id"]] = self.bsdf(c)
            elif c.tag == "shape":
                shapes += 1
                if shapes > ENTRIES_MAX:
                    raise _Error(c, f"more than {ENTRIES_MAX} shapes")
                self.shape(c)
            elif c.tag == "emitter":
                self.emitter(c)
            elif c.tag == "sensor":
                if self.camera is not None:
                    raise _Error(c, "a second <sensor>: one camera per scene")
                self.sensor(c)
            elif c.tag == "integrator":
                self.integrator(c)
            elif c.tag in _UNSUPPORTED:
                raise _Error(c, _UNSUPPORTED[c.tag])
            elif c.tag in _OBJECTS:
                raise _Error(
                    c, f"<{c.tag}> must be inside a sensor (film, rfilter, sampler) or is not supported here"
                )
            else:
                raise _Error(c, f"unknown element <{c.tag}> in <scene>")
        if not self.meshes:
            raise _Error(root, "the scene has no <shape>")
        if "integrator" not in self.settings:
            self.settings.setdefault("max_depth", DEPTH_MAX)  # Mitsuba's default: path, max_depth -1
        self.settings.pop("integrator", None)
        try:
            settings = msgspec.convert(self.settings, RenderSettings)
        except msgspec.ValidationError as e:
            raise _Error(root, f"render settings: {e}") from None
        camera = self.camera
        if camera is None:
            self.warn(root, "no <sensor>: the camera is framed on the scene")
            camera = self.frame(self.meshes) if self.frame is not None else CameraDesc()
        env = self.environment or EnvironmentDesc(color=(0.0, 0.0, 0.0))
        return LoadedScene(
            source=self.src,
            meshes=self.meshes,
            camera=camera,
            environment=env,
            settings=settings,
            warnings=self.warnings,
            lights=self.lights,
        )

    def _check_missing(self, body: list[_Node]) -> None:
        """Every file the scene names, checked before anything loads: all missing ones at once."""
        missing: list[str] = []
        for c in body:
            kind = c.attrs.get("type")
            if (c.tag, kind) not in (("shape", "obj"), ("shape", "ply"), ("emitter", "envmap")):
                continue
            for p in c.children:
                if p.tag == "string" and p.attrs.get("name") == "filename":
                    value = p.attrs.get("value", "")
                    if "\0" in value:
                        raise _Error(p, "filename: a file name with a NUL byte in it")
                    f = self.path.parent / value
                    what = f"{c.label()} filename"
                    if not self.files.exists(f, what, self.src):
                        missing.append(str(f))
        if missing:
            raise MissingAssetsError(self.src, sorted(set(missing)))

    # -- shapes ------------------------------------------------------------------------------

    def shape(self, node: _Node) -> None:
        kind = node.attrs.get("type")
        props = _Props(node)
        if kind in ("obj", "ply"):
            path = self.file(node, props)
            if kind == "obj":
                props.bool("flip_tex_coords", True)  # UVs only matter for textures: none here
            mesh = self.mesh_file(kind, path, props.bool("face_normals", False))
        elif kind == "sphere":
            center = props.point("center", (0.0, 0.0, 0.0))
            radius = props.float("radius", 1.0)
            if not radius > 0:
                raise _Error(node, f"radius {radius} must be > 0")
            mesh = _sphere(center, radius)
        elif kind == "rectangle":
            mesh = _rectangle()
        elif kind == "cube":
            mesh = _cube()
        else:
            raise _Error(node, f"shape type '{kind}' is not supported (obj, ply, sphere, rectangle, cube)")
        self.count(node, mesh, generated=kind not in ("obj", "ply"))
        m4 = props.transform("to_world")
        flip = props.bool("flip_normals", False)
        material: MaterialDesc | None = None
        emission = None
        for c in props.objects:
            if c.tag in ("bsdf", "ref"):
                if material is not None:
                    raise _Error(c, "a shape takes one bsdf")
                material = self.bsdf(c) if c.tag == "bsdf" else self.ref(c)
            elif c.tag == "emitter":
                if c.attrs.get("type") != "area":
                    raise _Error(
                        c, f"emitter type '{c.attrs.get('type')}' cannot be attached to a shape (area)"
                    )
                if emission is not None:
                    raise _Error(c, "a shape takes one area emitter")
                ep = _Props(c)
                emission = ep.color("radiance", 1.0)
                ep.finish()
            else:
                raise _Error(c, f"<{c.tag}> inside a shape is not supported")
        props.finish(allow_objects=True)
        name = node.attrs.get("id") or (mesh.name if kind in ("obj", "ply") else f"{kind} (line {node.line})")
        if material is None:
            material = MaterialDesc(name="default", base_color=(DEFAULT_REFLECTANCE,) * 3)
        if emission is not None:
            material = dataclasses.replace(
                material, name=f"{material.name} (emitter {name})", emission=emission
            )
        if flip:
            mesh = dataclasses.replace(
                mesh,
                indices=np.ascontiguousarray(mesh.indices[:, [0, 2, 1]]),
                normals=None if mesh.normals is None else -mesh.normals,
            )
        mesh = dataclasses.replace(mesh, name=name, materials=[material],
                                   material_ids=np.zeros(len(mesh.indices), np.int32))  # fmt: skip
        if m4 is not None:
            mesh = apply_transform(mesh, m4)
        self.meshes.append(mesh)

    def mesh_file(self, kind: str, path: Path, face_normals: bool) -> MeshData:
        """The file's mesh, read and parsed once however many shapes name it (arrays shared,
        never written in place); without face_normals and normals of its own, Mitsuba's."""
        key = (os.fspath(self.files.resolve(path, "filename", self.src)), face_normals)
        if key not in self.mesh_files:
            if kind == "obj":
                data = self.files.read(path, obj_format.OBJ_BYTES_MAX, "OBJ file", self.src)
                geo = obj_format._parse_obj(data, str(path), self.warnings)
                ids = np.zeros(len(geo.indices), np.int32)
                mesh = MeshData(
                    str(path), geo.positions, geo.indices, ids, [], normals=geo.normals, uvs=geo.uvs
                )
            else:
                mesh = ply_format.load_ply(path, warnings=self.warnings, files=self.files)
            if face_normals:
                mesh.normals = None
            elif mesh.normals is None and len(mesh.indices):
                mesh.normals = vertex_normals(mesh.positions, mesh.indices)
            self.mesh_files[key] = mesh
        return self.mesh_files[key]

    def count(self, node: _Node, mesh: MeshData, generated: bool) -> None:
        """The scene's running triangle counts, checked as each shape is made, before the next."""
        self.tris += len(mesh.indices)
        if self.tris_max is not None and self.tris > self.tris_max:
            raise _Error(node, f"the scene has more than {self.tris_max} triangles")
        if generated:
            self.generated_tris += len(mesh.indices)
            if self.generated_tris > GENERATED_TRIS_MAX:
                raise _Error(
                    node, f"spheres, rectangles and cubes add up to more than {GENERATED_TRIS_MAX} triangles"
                )

    # -- bsdfs -------------------------------------------------------------------------------

    def ref(self, node: _Node) -> MaterialDesc:
        """The top-level bsdf with that id, wherever in the file it is (Mitsuba allows refs ahead)."""
        rid = node.attrs.get("id")
        if rid in self.bsdfs:
            return self.bsdfs[rid]
        target = self.ids.get(rid)
        if target is None:
            raise _Error(node, f"ref: no object with id '{rid}'")
        if target.tag != "bsdf":
            raise _Error(node, f"ref: '{rid}' is a <{target.tag}>, only bsdfs can be referenced")
        if rid in self.resolving:
            raise _Error(node, f"ref: bsdf '{rid}' refers to itself")
        self.resolving.add(rid)
        self.bsdfs[rid] = self.bsdf(target)
        return self.bsdfs[rid]

    def bsdf(self, node: _Node) -> MaterialDesc:
        kind = node.attrs.get("type")
        name = node.attrs.get("id") or f"{kind} (line {node.line})"
        p = _Props(node)
        if kind == "twosided":
            inner = [c for c in p.objects if c.tag in ("bsdf", "ref")]
            if len(inner) != 1 or len(p.objects) != 1:
                raise _Error(
                    node, "twosided takes exactly one bsdf (different front and back are not supported)"
                )
            p.finish(allow_objects=True)
            mat = self.bsdf(inner[0]) if inner[0].tag == "bsdf" else self.ref(inner[0])
            if mat.kind == "dielectric":
                raise _Error(node, "twosided around a dielectric: a dielectric is two-sided already")
            return dataclasses.replace(mat, name=name, two_sided=True)
        if kind == "diffuse":
            mat = MaterialDesc(
                name=name, kind="diffuse", base_color=p.color("reflectance", DEFAULT_REFLECTANCE)
            )
        elif kind in ("conductor", "roughconductor"):
            mat = MaterialDesc(
                name=name, kind="conductor", roughness=self._roughness(p, kind == "roughconductor")
            )
            mat.base_color = p.color("specular_reflectance", 1.0)
            if p.has("eta") or p.has("k"):
                if p.has("material"):
                    raise _Error(node, "give either material or eta/k, not both")
                mat.fresnel, mat.eta, mat.k = "complex", p.color("eta", 0.0), p.color("k", 1.0)
            else:
                preset = p.string("material", "none")
                if preset == "none":
                    mat.fresnel = "none"
                elif preset in CONDUCTOR_PRESETS:
                    mat.fresnel = "complex"
                    mat.eta, mat.k = CONDUCTOR_PRESETS[preset]
                else:
                    known = ", ".join(["none", *CONDUCTOR_PRESETS])
                    raise _Error(node, f"conductor material '{preset[:40]}' is not known (known: {known})")
        elif kind in ("dielectric", "roughdielectric", "thindielectric"):
            ior = self._ior(p)
            rough = self._roughness(p, kind == "roughdielectric")
            if p.color("specular_reflectance", 1.0) != (1.0, 1.0, 1.0):
                raise _Error(node, "specular_reflectance other than 1 is not supported for dielectrics")
            tint = p.color("specular_transmittance", 1.0)
            mat = MaterialDesc(name=name, kind="dielectric", base_color=tint, roughness=rough, ior=ior,
                               thin=kind == "thindielectric", two_sided=True)  # fmt: skip
        elif kind in ("plastic", "roughplastic"):
            ior = self._ior(p, "polypropylene")
            rough = self._roughness(p, kind == "roughplastic")
            base = p.color("diffuse_reflectance", DEFAULT_REFLECTANCE)
            if p.color("specular_reflectance", 1.0) != (1.0, 1.0, 1.0):
                raise _Error(node, "specular_reflectance other than 1 is not supported for plastic")
            if p.bool("nonlinear", False):
                raise _Error(node, "nonlinear plastic is not supported")
            mat = MaterialDesc(name=name, kind="plastic", base_color=base, roughness=rough, ior=ior)
        else:
            known = "diffuse, (rough)conductor, (rough|thin)dielectric, (rough)plastic, twosided"
            raise _Error(node, f"bsdf type '{kind}' is not supported ({known})")
        p.finish()
        return mat

    def _ior(self, p: _Props, interior: str = "bk7") -> float:
        """int_ior / ext_ior, Mitsuba's defaults: BK7 (or polypropylene, for plastic) in air."""
        ior = p.ior("int_ior", interior) / p.ior("ext_ior", "air")
        if not IOR_MIN <= ior <= IOR_MAX:
            raise _Error(p.node, f"int_ior / ext_ior = {ior:.4g} is outside {IOR_MIN}..{IOR_MAX}")
        return ior

    def _roughness(self, p: _Props, rough: bool) -> float:
        """Perceptual roughness (sqrt of Mitsuba's alpha); 0 for the smooth plugins."""
        if not rough:
            return 0.0
        dist = p.props.get("distribution")
        if dist is None:
            self.warn(p.node, "no distribution: Mitsuba's default is beckmann, rendered here as GGX")
        elif p.string("distribution").strip().lower() != "ggx":
            raise _Error(dist, f"distribution '{dist.attrs.get('value', '')[:40]}' is not supported (ggx)")
        p.bool("sample_visible", True)
        if p.has("alpha_u") or p.has("alpha_v"):
            au, av = p.float("alpha_u", 0.1), p.float("alpha_v", 0.1)
            if au != av:
                raise _Error(p.node, "anisotropic roughness (alpha_u != alpha_v) is not supported")
            alpha = au
        else:
            alpha = p.float("alpha", 0.1)
        if not 0.0 <= alpha <= 1.0:
            raise _Error(p.node, f"alpha {alpha} is outside 0..1")
        return math.sqrt(alpha)

    # -- emitters ----------------------------------------------------------------------------

    def emitter(self, node: _Node) -> None:
        kind = node.attrs.get("type")
        p = _Props(node)
        if kind in ("envmap", "constant"):
            if self.env_node is not None:
                raise _Error(node, f"a second environment emitter (the first at line {self.env_node.line})")
            self.env_node = node
            if kind == "constant":
                self.environment = EnvironmentDesc(color=p.color("radiance", 1.0))
            else:
                path = self.file(node, p)
                scale = p.float("scale", 1.0)
                if scale < 0:
                    raise _Error(node, f"scale {scale} must be >= 0")
                m4 = p.transform("to_world")
                rot = 0.0
                if m4 is not None:
                    r = m4[:3, :3]
                    _rigid(m4, node, "envmap")
                    if not (
                        np.allclose(r[1], [0, 1, 0], atol=ORTHONORMAL_TOL)
                        and np.allclose(r[:, 1], [0, 1, 0], atol=ORTHONORMAL_TOL)
                    ):
                        raise _Error(node, "envmap: to_world may only rotate about +y")
                    rot = math.degrees(math.atan2(r[0, 2], r[0, 0]))
                p.bool("mis_compensation", False)
                tex = self.textures.load(path, src=self.src)
                image = TextureImage(tex.name, srgb_to_linear(tex.pixels))
                # kernels.lights maps directions to the image as Mitsuba does: the angle carries over
                self.environment = EnvironmentDesc(color=(scale,) * 3, image=image, rotation_deg=rot)
        elif kind == "point":
            m4 = p.transform("to_world")
            pos = p.point("position", None)
            if pos is not None and m4 is not None:
                raise _Error(node, "give either position or to_world, not both")
            if pos is None:
                pos = (0.0, 0.0, 0.0) if m4 is None else tuple(float(x) for x in m4[:3, 3])
            self.lights.append(LightDesc("point", position=pos, intensity=p.color("intensity", 1.0)))
        elif kind == "spot":
            m4 = p.transform("to_world")
            m4 = np.eye(4) if m4 is None else m4
            cutoff = p.float("cutoff_angle", 20.0)
            beam = p.float("beam_width", cutoff * 0.75)
            if not 0.0 < cutoff < 90.0 or not 0.0 < beam <= cutoff:
                raise _Error(node, f"spot: need 0 < beam_width ({beam}) <= cutoff_angle ({cutoff}) < 90")
            d = m4[:3, 2] / np.linalg.norm(m4[:3, 2])
            pos = tuple(float(x) for x in m4[:3, 3])
            light = LightDesc("spot", position=pos, direction=tuple(float(x) for x in d), cutoff_deg=cutoff)
            light.intensity, light.beam_width_deg = p.color("intensity", 1.0), beam
            self.lights.append(light)
        elif kind == "directional":
            m4 = p.transform("to_world")
            d = p.point("direction", None)
            if d is not None and m4 is not None:
                raise _Error(node, "give either direction or to_world, not both")
            d = np.array(d if d is not None else (m4[:3, 2] if m4 is not None else (0.0, 0.0, 1.0)))
            if np.linalg.norm(d) == 0.0:
                raise _Error(node, "directional: the direction is the zero vector")
            d = d / np.linalg.norm(d)
            self.lights.append(LightDesc("directional", direction=tuple(float(x) for x in d),
                                         intensity=p.color("irradiance", 1.0)))  # fmt: skip
        elif kind == "area":
            raise _Error(node, "an area emitter must be inside the <shape> it makes emit")
        else:
            raise _Error(
                node,
                f"emitter type '{kind}' is not supported (area, envmap, constant, point, spot, directional)",
            )
        p.finish()

    # -- sensor, film, sampler, integrator ---------------------------------------------------

    def sensor(self, node: _Node) -> None:
        kind = node.attrs.get("type")
        if kind not in ("perspective", "thinlens"):
            raise _Error(node, f"sensor type '{kind}' is not supported (perspective, thinlens)")
        p = _Props(node)
        m4 = p.transform("to_world")
        m4 = np.eye(4) if m4 is None else m4
        _rigid(m4, node, "sensor")
        width, height = 768, 576  # Mitsuba's hdrfilm defaults
        self.settings["spp"] = 4  # and its sampler's, without a <sampler>
        fov_axis = p.string("fov_axis", "x").strip().lower()
        if fov_axis not in ("x", "y", "diagonal", "smaller", "larger"):
            raise _Error(node, f"fov_axis '{fov_axis[:20]}' is not x, y, diagonal, smaller or larger")
        if p.has("fov") and p.has("focal_length"):
            raise _Error(node, "give either fov or focal_length, not both")
        focal = p.string("focal_length", "50mm") if not p.has("fov") else None
        fov = p.float("fov") if focal is None else None
        p.float("near_clip", 0.01)  # our rays start at the lens: nothing is clipped near
        p.float("far_clip", 1e4)
        p.float("shutter_open", 0.0)
        p.float("shutter_close", 0.0)
        aperture = focus = 0.0
        if kind == "thinlens":
            aperture = p.float("aperture_radius", 0.0)
            focus = p.float("focus_distance", 0.0)
            if aperture < 0 or focus <= 0:
                raise _Error(node, "thinlens: aperture_radius >= 0 and focus_distance > 0")
        for c in p.objects:
            if c.tag == "film":
                width, height = self.film(c)
            elif c.tag == "sampler":
                self.sampler(c)
            else:
                raise _Error(c, f"<{c.tag}> inside a sensor is not supported (film, sampler)")
        p.finish(allow_objects=True)
        if focal is not None:
            m = re.fullmatch(r"\s*([0-9.]+)\s*mm\s*", focal)
            f_mm = _number(m.group(1), node, "focal_length") if m else 0.0
            if not f_mm > 0:
                raise _Error(node, f"focal_length '{focal[:20]}' is not like '50mm'")
            fov = math.degrees(2 * math.atan(math.hypot(36.0, 24.0) / (2 * f_mm)))
            fov_axis = "diagonal"
        if not 0.0 < fov < 180.0:
            raise _Error(node, f"fov {fov} is outside (0, 180)")
        if fov_axis == "diagonal":  # the same frustum, spanned on x
            half = math.tan(math.radians(fov) / 2) * width / math.hypot(width, height)
            fov, fov_axis = math.degrees(2 * math.atan(half)), "x"
        pos = m4[:3, 3]
        self.camera = CameraDesc(
            position=tuple(float(x) for x in pos),
            look_at=tuple(float(x) for x in pos + m4[:3, 2]),
            up=tuple(float(x) for x in m4[:3, 1]),
            fov_deg=fov,
            fov_axis=fov_axis,
            aperture_radius=aperture,
            focus_distance=focus if kind == "thinlens" else 0.0,
        )
        self.settings["width"], self.settings["height"] = width, height

    def film(self, node: _Node) -> tuple[int, int]:
        if node.attrs.get("type") != "hdrfilm":
            raise _Error(node, f"film type '{node.attrs.get('type')}' is not supported (hdrfilm)")
        p = _Props(node)
        width, height = p.int("width", 768), p.int("height", 576)
        if not (1 <= width <= RES_PX_MAX and 1 <= height <= RES_PX_MAX):
            raise _Error(node, f"width x height {width} x {height}: each must be 1..{RES_PX_MAX}")
        fmt = p.string("pixel_format", "rgb").strip().lower()
        if fmt not in ("rgb", "rgba"):
            raise _Error(node, f"pixel_format '{fmt[:20]}' is not supported (rgb, rgba)")
        p.string("component_format", "float16")
        p.string("file_format", "openexr")
        p.bool("sample_border", False)
        rfilters = [c for c in p.objects if c.tag == "rfilter"]
        if len(rfilters) != len(p.objects) or len(rfilters) > 1:
            raise _Error(node, "a film takes one rfilter and nothing else")
        if not rfilters:
            self.warn(node, "no rfilter: Mitsuba's default is gaussian; meshrender's film is a box filter")
        for r in rfilters:
            if r.attrs.get("type") != "box":
                raise _Error(r, f"rfilter type '{r.attrs.get('type')}' is not supported (box)")
            _Props(r).finish()
        p.finish(allow_objects=True)
        return width, height

    def sampler(self, node: _Node) -> None:
        kind = node.attrs.get("type")
        if kind not in ("independent", "stratified", "multijitter", "orthogonal", "ldsampler"):
            raise _Error(node, f"sampler type '{kind}' is not supported (independent)")
        p = _Props(node)
        if kind != "independent":
            p.bool("jitter", True)
            self.warn(node, f"the {kind} sampler is sampled independently here (the same image, other noise)")
        self.settings["spp"] = p.int("sample_count", 4)
        self.settings["seed"] = p.int("seed", 0)
        if not 1 <= self.settings["spp"] <= SPP_MAX:
            raise _Error(node, f"sample_count {self.settings['spp']} is outside 1..{SPP_MAX}")
        if not 0 <= self.settings["seed"] <= 0xFFFFFFFF:
            raise _Error(node, f"seed {self.settings['seed']} is outside 0..{0xFFFFFFFF}")
        p.finish()

    def integrator(self, node: _Node) -> None:
        if node.attrs.get("type") != "path":
            raise _Error(node, f"integrator type '{node.attrs.get('type')}' is not supported (path)")
        if "integrator" in self.settings:
            raise _Error(node, "a second <integrator>")
        p = _Props(node)
        depth = p.int("max_depth", -1)
        if depth == -1:
            depth = DEPTH_MAX
        if not 1 <= depth <= DEPTH_MAX:
            raise _Error(node, f"max_depth {depth} is outside 1..{DEPTH_MAX} (or -1)")
        rr = p.int("rr_depth", 5)
        if not 1 <= rr <= DEPTH_MAX:
            raise _Error(node, f"rr_depth {rr} is outside 1..{DEPTH_MAX}")
        if p.bool("hide_emitters", False):
            raise _Error(node, "hide_emitters is not supported")
        p.finish()
        self.settings.update(integrator=True, max_depth=depth, rr_depth=rr)


def parse_mitsuba(
    path: str | os.PathLike,
    files: SceneFiles | None = None,
    params: dict[str, str] | None = None,
    *,
    frame_camera=None,
    tris_max: int | None = None,
) -> LoadedScene:
    """The scene of a Mitsuba 3 XML file, unchecked (`load.load_scene` checks and finishes it).
    `params` are `-D name=value` parameters; they win over the file's `<default>`s. Without a
    sensor the camera is `frame_camera(meshes)` (load's framing; default: CameraDesc()). The
    running triangle count is held to `tris_max` as shapes are made."""
    path = Path(path)
    src = str(path)
    files = files or SceneFiles.beside(path)
    data = files.read(path, XML_BYTES_MAX, "scene file", src)
    root = _parse_xml(data, src)
    loader = _Loader(path, files, params or {}, frame_camera, tris_max)
    try:
        return loader.load(root)
    except _Error as e:
        where = f"{e.node.label()}: " if e.node is not None else ""
        raise SceneError(src, f"{where}{e.problem}") from None

"""PLY (binary either endian, or ASCII) to one `MeshData`, by a reader of our own.

How: the header is parsed first (elements, their row counts, property types) and checked
against budgets before anything is allocated: a limit on the rows of every element (not only
vertex and face), and the fewest bytes the declared rows can take (binary: the fixed part of
every row; ASCII: two characters per value) must fit in the body the file really has, so a
267-byte file declaring 2^29 list rows is refused at once. The body is then read element by
element. Rows of fixed size (no lists, or lists whose lengths all equal the first row's: the
usual all-triangle or all-quad face element) are one numpy view each. Other list elements are
walked row by row (at most PLY_WALK_ROWS_MAX rows: Python time), recording offsets, and their
values gathered in one numpy call. ASCII is tokenized in one numpy call and sliced the same way.
The rows must end exactly where the file does (trailing whitespace aside): a header declaring
fewer rows than the file holds is an error, as is a truncated file.

Polygons are fan-triangulated. Vertex x/y/z are required; nx/ny/nz and texture coordinates
(s/t, u/v, texture_u/texture_v, texture_s/texture_t; v up, flipped to the glTF convention) are
used when all of a set are present; colours, other properties and other elements are ignored.
The mesh gets one diffuse 0.8 grey material unless a scene file assigns one.
"""

from __future__ import annotations

import os
import struct
import warnings as _warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SceneError
from .confine import SceneFiles
from .obj import TRIS_MAX, fan_triangulate
from .types import MaterialDesc, MeshData

PLY_HEADER_BYTES_MAX = 1 << 20  # a header is a few dozen lines; a megabyte without end_header is not PLY
PLY_BYTES_MAX = 1 << 33  # the vertex and face limits' worth of binary rows with normals and UVs
PLY_VERTS_MAX = 1 << 27  # 134M vertices: far past the triangle limit's worth of vertices
PLY_FACES_MAX = TRIS_MAX  # a face is at least one triangle
PLY_ROWS_MAX = 1 << 27  # rows of any other element: ignored, but still read past
PLY_ELEMENTS_MAX = 64  # elements in one header; real files have two or three
PLY_PROPS_MAX = 256  # properties of one element
PLY_WALK_ROWS_MAX = 1 << 23  # rows of mixed-length lists walked one by one (~1 us each in Python)
PLY_CORNERS_MAX = 1 << 28  # list values of one element in all: 2 GiB as int64, past TRIS_MAX's worth
FACE_PROPS = ("vertex_indices", "vertex_index")
UV_PROPS = (("s", "t"), ("u", "v"), ("texture_u", "texture_v"), ("texture_s", "texture_t"))
_FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")
_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_ASCII_VALUE_BYTES_MIN = 2  # one digit and one separator


@dataclass
class _Prop:
    name: str
    dtype: str  # numpy kind+size, no byte order ("f4"); the items' type for a list
    count_dtype: str | None = None  # a list's length type; None for a scalar


@dataclass
class _Element:
    name: str
    count: int
    props: list[_Prop]


def load_ply(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    warnings: list[str] | None = None,
    files: SceneFiles | None = None,
) -> MeshData:
    path = Path(path)
    src = str(path)
    warn = warnings if warnings is not None else []
    files = files or SceneFiles.beside(path)
    data = files.read(path, PLY_BYTES_MAX, "PLY file", src)
    fmt, body_at, elements = _read_header(data, src)
    by_name = {e.name: e for e in elements}
    if "vertex" not in by_name:
        raise SceneError(src, "PLY has no 'vertex' element")
    if "face" not in by_name or by_name["face"].count == 0:
        raise SceneError(src, "PLY has no faces (a point cloud cannot be rendered)")
    nverts, nfaces = by_name["vertex"].count, by_name["face"].count
    if nverts > PLY_VERTS_MAX or nfaces > PLY_FACES_MAX:
        raise SceneError(
            src,
            f"PLY has {nverts} vertices and {nfaces} faces; "
            f"the limits are {PLY_VERTS_MAX} and {PLY_FACES_MAX}",
        )
    vprops = {p.name: p for p in by_name["vertex"].props}
    fprops = {p.name: p for p in by_name["face"].props}
    face_prop = next((p for p in FACE_PROPS if p in fprops and fprops[p].count_dtype is not None), None)
    if face_prop is None:
        raise SceneError(src, f"PLY face element has no {' or '.join(FACE_PROPS)} list property")
    if fprops[face_prop].dtype[0] == "f":
        raise SceneError(src, f"PLY face {face_prop} are floating-point numbers, not vertex indices")
    for axis in "xyz":
        if axis not in vprops or vprops[axis].count_dtype is not None:
            raise SceneError(src, f"PLY vertex element has no '{axis}' property")
    _check_budget(fmt, len(data) - body_at, elements, src)

    reader = _AsciiBody(data, body_at, src) if fmt == "ascii" else _BinaryBody(data, body_at, fmt, src)
    v: dict[str, np.ndarray] = {}
    corners_per_face = flat = None
    for el in elements:
        keep = {"vertex": set(vprops), "face": {face_prop}}.get(el.name, set())
        got = reader.element(el, keep)
        if el.name == "vertex":
            v = {k: val for k, val in got.items() if not isinstance(val, tuple)}
        elif el.name == "face":
            corners_per_face, flat = got[face_prop]
        else:
            warn.append(f"{src}: PLY element '{el.name}' is ignored")
    reader.finish()
    assert corners_per_face is not None and flat is not None

    positions = np.stack([np.asarray(v[a], np.float32) for a in "xyz"], axis=1)
    nv = len(positions)
    normals = None
    if all(a in v for a in ("nx", "ny", "nz")):
        normals = np.stack([np.asarray(v[a], np.float32) for a in ("nx", "ny", "nz")], axis=1)
    uvs = None
    for pu, pv in UV_PROPS:
        if pu in v and pv in v:
            uvs = np.stack([np.asarray(v[pu], np.float32), 1.0 - np.asarray(v[pv], np.float32)], axis=1)
            break

    small = np.flatnonzero(corners_per_face < 3)
    if len(small):
        raise SceneError(src, f"face {small[0]} has {corners_per_face[small[0]]} vertices (needs at least 3)")
    bad = np.flatnonzero((flat < 0) | (flat >= nv))
    if len(bad):
        face = int(np.searchsorted(np.cumsum(corners_per_face), bad[0], side="right"))
        raise SceneError(src, f"face {face}: vertex index {flat[bad[0]]} is out of range ({nv} vertices)")
    if int((corners_per_face - 2).sum()) > TRIS_MAX:
        raise SceneError(src, f"more than {TRIS_MAX} triangles")
    tri_tok, _ = fan_triangulate(corners_per_face)
    indices = flat[tri_tok].astype(np.int32)
    return MeshData(
        name=name or src,
        positions=positions,
        indices=indices,
        material_ids=np.zeros(len(indices), np.int32),
        materials=[MaterialDesc(name="default", two_sided=True)],  # no sidedness in PLY: as OBJ
        normals=normals,
        uvs=uvs,
    )


def _check_budget(fmt: str, body_bytes: int, elements: list[_Element], src: str) -> None:
    """Refuse a header whose rows cannot fit in the body: before anything is allocated."""
    need = 0
    for el in elements:
        if el.count > PLY_ROWS_MAX:
            raise SceneError(src, f"PLY element '{el.name}' has {el.count} rows; the limit is {PLY_ROWS_MAX}")
        if fmt == "ascii":
            row = _ASCII_VALUE_BYTES_MIN * len(el.props)
        else:
            row = sum(np.dtype(p.count_dtype or p.dtype).itemsize for p in el.props)
        need += el.count * row
    if need > body_bytes:
        raise SceneError(
            src,
            f"broken PLY (truncated): the header declares rows that need at least {need} bytes, "
            f"but the file has {body_bytes} after the header",
        )


class _BinaryBody:
    """Elements of a binary body, in order; `element` returns the kept properties: a scalar as
    an array, a list as (lengths, flat int64/float64 values)."""

    def __init__(self, data: bytes, pos: int, fmt: str, src: str):
        self.data, self.pos, self.src = data, pos, src
        self.bo = "<" if fmt == "binary_little_endian" else ">"
        self.u8 = np.frombuffer(data, np.uint8)

    def _truncated(self, el: _Element, row: int | None = None) -> SceneError:
        at = f" (row {row} of {el.count})" if row is not None else ""
        return SceneError(
            self.src, f"broken PLY (truncated): element '{el.name}'{at} runs past the end of the file"
        )

    def element(self, el: _Element, keep: set[str]) -> dict:
        bo = self.bo
        if el.count == 0:
            return _empty(el, keep)
        lists = [p for p in el.props if p.count_dtype is not None]
        lengths = [0] * len(lists)
        if lists:  # the first row's list lengths: every row may be like it
            at, j = self.pos, 0
            for p in el.props:
                if p.count_dtype is None:
                    at += np.dtype(p.dtype).itemsize
                    continue
                size = np.dtype(p.count_dtype).itemsize
                if at + size > len(self.data):
                    raise self._truncated(el, 0)
                lengths[j] = int(np.frombuffer(self.data, bo + p.count_dtype, 1, at)[0])
                if lengths[j] < 0:
                    raise SceneError(self.src, f"PLY element '{el.name}' row 0: negative list length")
                at += size + lengths[j] * np.dtype(p.dtype).itemsize
                j += 1
            if at > len(self.data):
                raise self._truncated(el, 0)
        fields, j = [], 0
        for k, p in enumerate(el.props):
            if p.count_dtype is None:
                fields.append((f"f{k}", bo + p.dtype))
            else:
                fields.append((f"n{k}", bo + p.count_dtype))
                fields.append((f"f{k}", bo + p.dtype, (lengths[j],)))
                j += 1
        dt = np.dtype(fields)
        end = self.pos + el.count * dt.itemsize
        if not lists or end <= len(self.data):
            if end > len(self.data):
                raise self._truncated(el)
            rows = np.frombuffer(self.data, dt, el.count, self.pos)
            if all(bool(np.all(rows[f"n{k}"] == lengths[j]))
                   for j, k in enumerate(k for k, p in enumerate(el.props) if p.count_dtype)):  # fmt: skip
                self.pos = end
                out = {}
                for k, p in enumerate(el.props):
                    if p.name not in keep:
                        continue
                    if p.count_dtype is None:
                        out[p.name] = np.array(rows[f"f{k}"])
                    else:
                        n = lengths[[q.name for q in lists].index(p.name)]
                        out[p.name] = (
                            np.full(el.count, n, np.int64),
                            _values(rows[f"f{k}"].reshape(-1), p, self.src),
                        )
                return out
        return self._walk(el, keep)

    def _walk(self, el: _Element, keep: set[str]) -> dict:
        """Rows of differing list lengths, one by one: offsets first, values gathered after."""
        if el.count > PLY_WALK_ROWS_MAX:
            raise SceneError(
                self.src,
                f"PLY element '{el.name}': {el.count} rows of lists of differing lengths; "
                f"the limit is {PLY_WALK_ROWS_MAX} (all-triangle or all-quad faces have no limit)",
            )
        bo, data, n_data = self.bo, self.data, len(self.data)
        plan = []  # per property: (is list, count struct, count size, item size)
        for p in el.props:
            if p.count_dtype is None:
                plan.append((False, None, 0, np.dtype(p.dtype).itemsize))
            else:
                c = np.dtype(p.count_dtype)
                plan.append((True, struct.Struct(bo + c.char), c.itemsize, np.dtype(p.dtype).itemsize))
        offsets = [np.empty(el.count, np.int64) for _ in el.props]
        counts = [np.empty(el.count, np.int64) if is_list else None for is_list, *_ in plan]
        pos, total = self.pos, [0] * len(plan)
        for r in range(el.count):
            for k, (is_list, cst, csize, isize) in enumerate(plan):
                if not is_list:
                    offsets[k][r] = pos
                    pos += isize
                    continue
                if pos + csize > n_data:
                    raise self._truncated(el, r)
                (n,) = cst.unpack_from(data, pos)
                if n < 0:
                    raise SceneError(self.src, f"PLY element '{el.name}' row {r}: negative list length")
                counts[k][r] = n
                offsets[k][r] = pos + csize
                pos += csize + n * isize
                total[k] += n
                if total[k] > PLY_CORNERS_MAX:
                    raise SceneError(
                        self.src, f"PLY element '{el.name}': more than {PLY_CORNERS_MAX} list values"
                    )
        if pos > n_data:
            raise self._truncated(el, el.count - 1)
        self.pos = pos
        out = {}
        for k, p in enumerate(el.props):
            if p.name not in keep:
                continue
            isize = plan[k][3]
            if counts[k] is None:
                raw = self.u8[offsets[k][:, None] + np.arange(isize)]
                out[p.name] = raw.reshape(-1).view(bo + p.dtype).copy()
            else:
                c = counts[k]
                starts = np.repeat(offsets[k], c) + _ramp(c) * isize
                raw = self.u8[starts[:, None] + np.arange(isize)]
                out[p.name] = (c, _values(raw.reshape(-1).view(bo + p.dtype), p, self.src))
        return out

    def finish(self) -> None:
        rest = self.data[self.pos :]
        if rest.strip():
            raise SceneError(
                self.src,
                f"broken PLY (malformed): {len(rest)} bytes after the last element "
                "(the header declares fewer rows than the file holds)",
            )


class _AsciiBody:
    """Elements of an ASCII body from one array of tokens; as `_BinaryBody`."""

    def __init__(self, data: bytes, pos: int, src: str):
        self.src = src
        body = data[pos:]
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", DeprecationWarning)
            try:
                self.tok = np.fromstring(body, dtype=np.float64, sep=" ")
            except ValueError:
                self.tok = np.zeros(0)
        # numpy stops at the first token it cannot read: every token must have been read
        isword = np.frombuffer(body, np.uint8) > 32
        words = int(np.count_nonzero(isword[1:] & ~isword[:-1])) + int(isword[:1].sum())
        if words != len(self.tok):
            raise SceneError(
                src, f"broken PLY (malformed): value {len(self.tok) + 1} of the body is not a number"
            )
        self.pos = 0

    def _truncated(self, el: _Element) -> SceneError:
        return SceneError(
            self.src, f"broken PLY (truncated): element '{el.name}' runs past the end of the file"
        )

    def element(self, el: _Element, keep: set[str]) -> dict:
        tok, pos = self.tok, self.pos
        lists = [k for k, p in enumerate(el.props) if p.count_dtype is not None]
        if el.count == 0:
            return _empty(el, keep)
        # the first row's list lengths; every row may be like it
        lengths, at = {}, pos
        for k, p in enumerate(el.props):
            if at >= len(tok):
                raise self._truncated(el)
            if p.count_dtype is not None:
                n = tok[at]
                if not (np.isfinite(n) and n >= 0 and n == int(n)):
                    raise SceneError(
                        self.src, f"broken PLY (malformed): element '{el.name}' row 0: list length {n}"
                    )
                lengths[k] = int(n)
                at += 1 + int(n)
            else:
                at += 1
        width = at - pos
        block = tok[pos : pos + el.count * width]
        if len(block) == el.count * width:
            rows = block.reshape(el.count, width)
            col, cols, same = 0, {}, True
            for k, p in enumerate(el.props):
                if p.count_dtype is None:
                    cols[k] = (col, 1)
                    col += 1
                else:
                    same &= bool(np.all(rows[:, col] == lengths[k]))
                    cols[k] = (col + 1, lengths[k])
                    col += 1 + lengths[k]
            if same:
                self.pos = pos + el.count * width
                out = {}
                for k, p in enumerate(el.props):
                    if p.name not in keep:
                        continue
                    c0, n = cols[k]
                    if p.count_dtype is None:
                        out[p.name] = rows[:, c0].copy()
                    else:
                        flat = rows[:, c0 : c0 + n].reshape(-1)
                        out[p.name] = (np.full(el.count, n, np.int64), _values(flat, p, self.src))
                return out
        if not lists:
            raise self._truncated(el)
        if el.count > PLY_WALK_ROWS_MAX:
            raise SceneError(
                self.src,
                f"PLY element '{el.name}': {el.count} rows of lists of differing lengths; "
                f"the limit is {PLY_WALK_ROWS_MAX}",
            )
        offsets = [np.empty(el.count, np.int64) for _ in el.props]
        counts = {k: np.empty(el.count, np.int64) for k in lists}
        ntok = len(tok)
        for r in range(el.count):
            for k, p in enumerate(el.props):
                if pos >= ntok:
                    raise self._truncated(el)
                if p.count_dtype is None:
                    offsets[k][r] = pos
                    pos += 1
                    continue
                n = tok[pos]
                if not (np.isfinite(n) and n >= 0 and n == int(n)):
                    raise SceneError(
                        self.src, f"broken PLY (malformed): element '{el.name}' row {r}: list length {n}"
                    )
                counts[k][r] = int(n)
                offsets[k][r] = pos + 1
                pos += 1 + int(n)
        if pos > ntok:
            raise self._truncated(el)
        self.pos = pos
        out = {}
        for k, p in enumerate(el.props):
            if p.name not in keep:
                continue
            if p.count_dtype is None:
                out[p.name] = tok[offsets[k]]
            else:
                c = counts[k]
                out[p.name] = (c, _values(tok[np.repeat(offsets[k], c) + _ramp(c)], p, self.src))
        return out

    def finish(self) -> None:
        if self.pos != len(self.tok):
            raise SceneError(
                self.src,
                f"broken PLY (malformed): {len(self.tok) - self.pos} values after the last element "
                "(the header declares fewer rows than the file holds)",
            )


def _values(a: np.ndarray, p: _Prop, src: str) -> np.ndarray:
    """List values: int64 for integer types (ASCII ones checked to be whole), else float64."""
    if p.dtype[0] == "f":
        return np.asarray(a, np.float64)
    if a.dtype.kind == "f":
        if not np.all(np.floor(a) == a):
            raise SceneError(src, f"PLY list '{p.name}' of integers holds a fraction or NaN")
        return a.astype(np.int64)
    return a.astype(np.int64)


def _empty(el: _Element, keep: set[str]) -> dict:
    return {
        p.name: (np.zeros(0, np.int64), np.zeros(0, np.int64)) if p.count_dtype else np.zeros(0)
        for p in el.props
        if p.name in keep
    }


def _ramp(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each c in counts, concatenated."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _read_header(data: bytes, src: str) -> tuple[str, int, list[_Element]]:
    """(format, body offset, elements), checked; the body is not looked at."""
    head = data[:PLY_HEADER_BYTES_MAX]
    if not head.startswith(b"ply"):
        raise SceneError(src, "not a PLY file (no 'ply' magic)")
    end = head.find(b"end_header")
    if end < 0:
        raise SceneError(src, "broken PLY: the header has no 'end_header'")
    nl = head.find(b"\n", end)
    if nl < 0:
        raise SceneError(src, "broken PLY: nothing after 'end_header'")
    fmt = None
    elements: list[_Element] = []
    for lineno, line in enumerate(head[:end].decode("ascii", errors="replace").splitlines(), 1):
        words = line.split()
        if not words or words[0] in ("ply", "comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
                if fmt not in _FORMATS:
                    raise SceneError(src, f"unknown PLY format '{fmt}'")
            elif words[0] == "element":
                count = int(words[2])
                if count < 0 or len(words) != 3:
                    raise ValueError
                if len(elements) >= PLY_ELEMENTS_MAX:
                    raise SceneError(src, f"PLY header has more than {PLY_ELEMENTS_MAX} elements")
                if any(e.name == words[1] for e in elements):
                    raise SceneError(src, f"header line {lineno}: element '{words[1]}' is declared twice")
                elements.append(_Element(words[1], count, []))
            elif words[0] == "property":
                if not elements:
                    raise SceneError(src, f"header line {lineno}: property before any element")
                el = elements[-1]
                if len(el.props) >= PLY_PROPS_MAX:
                    raise SceneError(src, f"PLY element '{el.name}' has more than {PLY_PROPS_MAX} properties")
                if words[1] == "list":
                    if len(words) != 5:
                        raise ValueError
                    ctype, itype = _TYPES.get(words[2]), _TYPES.get(words[3])
                    if ctype is None or itype is None or ctype[0] == "f":
                        raise SceneError(src, f"header line {lineno}: bad list types in {line.strip()!r}")
                    prop = _Prop(words[4], itype, ctype)
                else:
                    if len(words) != 3:
                        raise ValueError
                    ptype = _TYPES.get(words[1])
                    if ptype is None:
                        raise SceneError(src, f"header line {lineno}: unknown property type '{words[1]}'")
                    prop = _Prop(words[2], ptype)
                if any(q.name == prop.name for q in el.props):
                    raise SceneError(src, f"header line {lineno}: property '{prop.name}' is declared twice")
                el.props.append(prop)
            else:
                raise SceneError(src, f"header line {lineno}: unknown keyword '{words[0]}'")
        except (IndexError, ValueError):
            raise SceneError(src, f"header line {lineno}: cannot parse {line.strip()[:80]!r}") from None
    if fmt is None:
        raise SceneError(src, "broken PLY: the header has no 'format' line")
    return fmt, nl + 1, elements

"""PLY (binary either endian, or ASCII) to one `MeshData`, through `plyfile`.

How: the header is read first by a small parser here, so element counts are checked against
the limits before plyfile allocates anything and the face property's name (`vertex_indices` or
`vertex_index`) is known. A binary file is then memory-mapped by plyfile as fixed-length
triangle lists (`known_list_len`), which plyfile verifies row by row; if some face is not a
triangle, quads are tried the same way, and only then the general (per-face) reader. An ASCII
file in the usual layout (scalar properties, and a face element holding only the index list) is
parsed in one numpy call, its row and token counts checked exactly; any other ASCII layout, or
one that fails those checks, goes through plyfile, which names the row at fault. Polygons
are fan-triangulated. Vertex x/y/z are required; nx/ny/nz and texture coordinates (s/t, u/v,
texture_u/texture_v, texture_s/texture_t; v up, flipped to the glTF convention) are used when
all of a set are present; colours and other properties are ignored. The mesh gets one diffuse
0.8 grey material unless a scene file assigns one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import SceneError
from .obj import TRIS_MAX, fan_triangulate
from .types import MaterialDesc, MeshData

PLY_HEADER_BYTES_MAX = 1 << 20  # a header is a few dozen lines; a megabyte without end_header is not PLY
PLY_VERTS_MAX = 1 << 27  # 134M vertices: far past the triangle limit's worth of vertices
PLY_FACES_MAX = TRIS_MAX  # a face is at least one triangle
FACE_PROPS = ("vertex_indices", "vertex_index")
UV_PROPS = (("s", "t"), ("u", "v"), ("texture_u", "texture_v"), ("texture_s", "texture_t"))
_FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")


def load_ply(
    path: str | os.PathLike, *, name: str | None = None, warnings: list[str] | None = None
) -> MeshData:
    path = Path(path)
    src = str(path)
    warn = warnings if warnings is not None else []
    fmt, body_at, elements = _read_header(path)
    counts = {e: c for e, c, _ in elements}
    props = {e: [pname for pname, _ in p] for e, _, p in elements}
    if "vertex" not in counts:
        raise SceneError(src, "PLY has no 'vertex' element")
    if "face" not in counts or counts["face"] == 0:
        raise SceneError(src, "PLY has no faces (a point cloud cannot be rendered)")
    if counts["vertex"] > PLY_VERTS_MAX or counts["face"] > PLY_FACES_MAX:
        raise SceneError(
            src,
            f"PLY has {counts['vertex']} vertices and {counts['face']} faces; the limits are "
            f"{PLY_VERTS_MAX} and {PLY_FACES_MAX}",
        )
    face_prop = next((p for p in FACE_PROPS if p in props["face"]), None)
    if face_prop is None:
        raise SceneError(src, f"PLY face element has no {' or '.join(FACE_PROPS)} list property")
    for axis in "xyz":
        if axis not in props["vertex"]:
            raise SceneError(src, f"PLY vertex element has no '{axis}' property")

    read = None
    if fmt == "ascii":
        read = _read_ascii_fast(path, body_at, elements, face_prop)
    if read is None:
        read = _read_plyfile(src, fmt, face_prop)
    v, corners_per_face, flat = read
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
    for other in counts:
        if other not in ("vertex", "face"):
            warn.append(f"{src}: PLY element '{other}' is ignored")
    return MeshData(
        name=name or src,
        positions=positions,
        indices=indices,
        material_ids=np.zeros(len(indices), np.int32),
        materials=[MaterialDesc(name="default")],
        normals=normals,
        uvs=uvs,
    )


def _read_plyfile(src: str, fmt: str, face_prop: str):
    """(vertex columns, corners per face, flat corner indices) through plyfile."""
    from plyfile import PlyData, PlyElementParseError, PlyHeaderParseError

    ply = None
    try:
        if fmt != "ascii":
            for n in (3, 4):  # fast path: every face has n corners; plyfile checks that it is so
                try:
                    ply = PlyData.read(src, known_list_len={"face": {face_prop: n}})
                    break
                except PlyElementParseError:
                    pass  # another length somewhere (or a broken file: the general reader says which)
        if ply is None:
            ply = PlyData.read(src)
    except (PlyElementParseError, PlyHeaderParseError) as e:
        kind = "truncated" if "end-of-file" in str(e) else "malformed"
        raise SceneError(src, f"broken PLY ({kind}): {e}") from None
    except (ValueError, OSError) as e:
        raise SceneError(src, f"cannot read PLY: {e}") from None
    vdata = ply["vertex"].data
    v = {n: np.array(vdata[n]) for n in vdata.dtype.names}  # copies: nothing keeps the file mapped
    faces = ply["face"].data[face_prop]
    if faces.dtype != object:  # fixed-length rows (fast path)
        corners_per_face = np.full(len(faces), faces.shape[1], np.int64)
        flat = np.asarray(faces, np.int64).reshape(-1)
    else:
        corners_per_face = np.fromiter((len(f) for f in faces), np.int64, len(faces))
        flat = np.concatenate([np.asarray(f, np.int64) for f in faces])
    return v, corners_per_face, flat


def _read_ascii_fast(path: Path, body_at: int, elements, face_prop: str):
    """ASCII PLY parsed in one numpy call, for the usual layout: scalar properties everywhere
    except the face element, whose only property is the index list. Every row must be on its
    own line and the token count must match exactly; otherwise None (plyfile then reads it and
    reports the row at fault)."""
    for ename, _, eprops in elements:
        lists = [n for n, is_list in eprops if is_list]
        if lists and (ename != "face" or len(eprops) != 1):
            return None
    data = path.read_bytes()[body_at:]
    rows = sum(c for _, c, _ in elements)
    if data.rstrip().count(b"\n") + 1 != rows:
        return None
    try:
        tok = np.fromstring(data, dtype=np.float64, sep=" ")
    except ValueError:
        return None
    out_v, pos = None, 0
    corners = flat = None
    for ename, count, eprops in elements:
        if ename == "face":
            n = int(tok[pos]) if count and pos < len(tok) else 3
            block = tok[pos : pos + count * (n + 1)]
            if len(block) == count * (n + 1) and np.all(block[:: n + 1] == n):
                corners = np.full(count, n, np.int64)
                flat = block.reshape(count, n + 1)[:, 1:].reshape(-1)
                pos += count * (n + 1)
            else:  # mixed polygon sizes: walk the rows
                corners = np.empty(count, np.int64)
                starts = np.empty(count, np.int64)
                for r in range(count):
                    if pos >= len(tok):
                        return None
                    k = int(tok[pos])
                    corners[r], starts[r] = k, pos + 1
                    pos += k + 1
                if pos > len(tok) or np.any(corners < 0):
                    return None
                flat = tok[np.repeat(starts, corners) + _ramp(corners)]
        else:
            k = len(eprops)
            block = tok[pos : pos + count * k]
            if len(block) != count * k:
                return None
            if ename == "vertex":
                cols = block.reshape(count, k)
                out_v = {name: cols[:, j] for j, (name, _) in enumerate(eprops)}
            pos += count * k
    if pos != len(tok) or out_v is None or corners is None or np.any(np.floor(flat) != flat):
        return None
    return out_v, corners, flat.astype(np.int64)


def _ramp(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each c in counts, concatenated."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _read_header(path: Path) -> tuple[str, int, list[tuple[str, int, list[tuple[str, bool]]]]]:
    """(format, body offset, [(element, count, [(property, is_list)])]), without reading the body."""
    src = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(PLY_HEADER_BYTES_MAX)
    except FileNotFoundError:
        raise SceneError(src, "PLY file not found") from None
    except OSError as e:
        raise SceneError(src, f"cannot read PLY file: {e.strerror or e}") from None
    if not head.startswith(b"ply"):
        raise SceneError(src, "not a PLY file (no 'ply' magic)")
    end = head.find(b"end_header")
    if end < 0:
        raise SceneError(src, "broken PLY: the header has no 'end_header'")
    nl = head.find(b"\n", end)
    if nl < 0:
        raise SceneError(src, "broken PLY: nothing after 'end_header'")
    fmt = None
    elements: list[tuple[str, int, list[tuple[str, bool]]]] = []
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
                if count < 0:
                    raise ValueError
                elements.append((words[1], count, []))
            elif words[0] == "property":
                if not elements:
                    raise SceneError(src, f"header line {lineno}: property before any element")
                elements[-1][2].append((words[-1], words[1] == "list"))
            else:
                raise SceneError(src, f"header line {lineno}: unknown keyword '{words[0]}'")
        except (IndexError, ValueError):
            raise SceneError(src, f"header line {lineno}: cannot parse {line.strip()!r}") from None
    if fmt is None:
        raise SceneError(src, "broken PLY: the header has no 'format' line")
    return fmt, nl + 1, elements

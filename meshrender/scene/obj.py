"""Wavefront OBJ + MTL to one `MeshData`, parsed with numpy over the whole text.

How: the file is read once into a byte array. Line starts come from the newline positions;
each line is classified by its first bytes (`v `, `vt `, `vn `, `f `), and the bodies of all
lines of one kind are gathered into one buffer (a few slices: such lines come in runs) and
converted in one C call (`np.fromstring`). Token counts per line (from whitespace transitions)
check that every line had the expected number of numbers, so a stray token is reported with
its line number rather than shifting everything after it. Faces: when every vertex reference
has the same form (`v`, `v/vt`, `v//vn`, `v/vt/vn`, the usual case) the slashes become spaces
and all indices parse at once; mixed forms fall back to a per-token Python parser. Rare
statements (`usemtl`, `mtllib`, `o`, `g`, ...) are handled one by one in Python.

Polygons are fan-triangulated. Output vertices are unique (v, vt, vn) triples, built only when
vt/vn indices differ from the position index. OBJ texture coordinates have v up; they are
flipped to the glTF convention (v down) that `MeshData.uvs` uses. MTL: `Kd`, `Ke`, `map_Kd`
(path relative to the MTL; `-s`/`-o`/... options are parsed and ignored), `Pm`/`Pr` (PBR
extension: Pm >= 0.5 is a conductor with roughness Pr), `illum` 4, 6, 7 or 9 (the
transparent, refracting models) is a dielectric of index `Ni` (1.5 when absent) with roughness
`Pr` (0 when absent). Other MTL statements are ignored.

Sidedness: OBJ and MTL have no notion of a back face, exporters do not keep a consistent winding,
and the viewers these files are made for draw both sides, so OBJ materials are two-sided (one-sided
would blacken every face wound the other way). Mitsuba's one-sidedness belongs to its BSDFs, not
to its OBJ loader: a Mitsuba XML or TOML scene that gives a mesh its own material decides there.

Every file is read through `SceneFiles`: MTLs and textures must lie in the scene's folder tree
(`mtllib ../../etc/passwd` is refused, not read), and each kind of file has a byte budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MissingAssetsError, SceneError
from .confine import SceneFiles
from .images import TextureCache
from .materials import IOR_MAX, IOR_MIN
from .types import MaterialDesc, MeshData

OBJ_BYTES_MAX = 1 << 30  # ~10M triangles with v/vt/vn; parsing peaks near 9x the file size in RAM
TRIS_MAX = 1 << 26  # 67M triangles: past any single mesh a peer can hold compiled (~6 GiB)
GLASS_ILLUMS = (4, 6, 7, 9)  # MTL illumination models that refract: a dielectric
MTL_BYTES_MAX = 16 << 20  # material libraries are small text; more is not an MTL
GATHER_RUNS_MAX = 4096  # past this many separate runs of one line kind, gather by byte mask
DECIMAL_CHARS_MAX = 20  # sign, dot and 18 digits: the longest decimal that still parses exactly as int64
DEFAULT_MATERIAL = "default"  # faces before any `usemtl`, or naming an undefined material
STATEMENTS_MAX = 1 << 20  # lines other than v/vt/vn/f (usemtl, g, o, s, ...): each costs Python time
MTLLIBS_MAX = 256  # distinct material libraries one OBJ names; each is a file to open and parse

_V, _T, _N, _F, _SP, _NL, _SLASH = (ord(c) for c in "vtnf \n/")
_POW10 = 10.0 ** np.arange(DECIMAL_CHARS_MAX)  # exact in float64 up to 1e22
# Statements that carry no surface geometry for a path tracer: accepted and ignored.
_IGNORED = set(
    b"s o g vp cstype deg bmat step parm trim hole scrv sp end con mg bevel c_interp d_interp lod usemap "
    b"maplib shadow_obj trace_obj ctech stech call csh".split()
)
# Geometry we cannot render as triangles: skipped with a warning.
_SKIPPED = {
    b"l": "line elements",
    b"p": "point elements",
    b"curv": "curves",
    b"curv2": "curves",
    b"surf": "free-form surfaces",
}
# map_Kd options and how many arguments each takes (numeric ones take 1..n numbers).
_MAP_OPTIONS = {
    "-blendu": 1,
    "-blendv": 1,
    "-bm": 1,
    "-boost": 1,
    "-cc": 1,
    "-clamp": 1,
    "-imfchan": 1,
    "-mm": 2,
    "-o": 3,
    "-s": 3,
    "-t": 3,
    "-texres": 1,
    "-type": 1,
}


def load_obj(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    warnings: list[str] | None = None,
    textures: TextureCache | None = None,
    files: SceneFiles | None = None,
) -> MeshData:
    """Load an OBJ file and the MTL libraries it names. Missing MTLs/textures: one MissingAssetsError.
    `files` confines what it reads (default: to the OBJ's own folder)."""
    path = Path(path)
    src = str(path)
    warn = warnings if warnings is not None else []
    files = files or (textures.files if textures is not None else None) or SceneFiles.beside(path)
    data = files.read(path, OBJ_BYTES_MAX, "OBJ file", src)
    geo = _parse_obj(data, src, warn)

    mtl_defs: dict[str, _Mtl] = {}
    missing: list[str] = []
    for lib in geo.mtllibs:
        lib_path = path.parent / lib
        if not files.exists(lib_path, "MTL library", src):
            missing.append(str(lib_path))
            continue
        for mname, m in parse_mtl(lib_path, warn, files=files).items():
            mtl_defs.setdefault(mname, m)  # the first library to define a name wins
    for mname in geo.used_names:
        m = mtl_defs.get(mname)
        if m is not None and m.map_kd is not None and not files.exists(m.map_kd, "texture", m.source):
            missing.append(str(m.map_kd))
    if missing:
        raise MissingAssetsError(src, sorted(set(missing)))

    cache = textures or TextureCache(files)
    materials: list[MaterialDesc] = []
    undefined = []
    for mname in geo.material_names:
        m = mtl_defs.get(mname)
        if m is None:
            if mname != DEFAULT_MATERIAL:
                undefined.append(mname)
            materials.append(MaterialDesc(name=mname, two_sided=True))
        else:
            materials.append(m.to_material(cache))
    if undefined:
        where = "no mtllib was given" if not geo.mtllibs else "not defined in " + ", ".join(geo.mtllibs)
        warn.append(f"{src}: material(s) {', '.join(map(repr, undefined))} {where}; using diffuse 0.8 grey")
    return MeshData(
        name=name or src,
        positions=geo.positions,
        indices=geo.indices,
        material_ids=geo.material_ids,
        materials=materials,
        normals=geo.normals,
        uvs=geo.uvs,
    )


def referenced_files(path: str | os.PathLike, *, files: SceneFiles | None = None) -> list[Path]:
    """Every file the OBJ needs besides itself: its MTLs and the textures of materials it uses.

    Cheap (a substring search, no parsing of geometry), for listing all missing assets at once.
    MTLs that do not exist are listed without looking further; one outside the scene's folder
    tree (or a device, FIFO, ...) is a SceneError at once."""
    path = Path(path)
    src = str(path)
    files = files or SceneFiles.beside(path)
    data = files.read(path, OBJ_BYTES_MAX, "OBJ file", src)
    out: list[Path] = []
    used = set(_directive_values(data, b"usemtl", src))
    values = _directive_values(data, b"mtllib", src)
    libs = list(dict.fromkeys(lib for v in values for lib in _split_mtllib(v, path.parent)))
    if len(libs) > MTLLIBS_MAX:
        raise SceneError(src, f"the OBJ names {len(libs)} material libraries; the limit is {MTLLIBS_MAX}")
    for lib in libs:
        lib_path = path.parent / lib
        out.append(lib_path)
        if files.exists(lib_path, "MTL library", src):
            mtl = parse_mtl(lib_path, [], files=files)
            out.extend(m.map_kd for n, m in mtl.items() if n in used and m.map_kd)
    return out


# --------------------------------------------------------------------------------------- MTL


@dataclass
class _Mtl:
    name: str
    source: str = ""  # the MTL file, for messages
    kd: tuple[float, float, float] = (0.8, 0.8, 0.8)
    ke: tuple[float, float, float] = (0.0, 0.0, 0.0)
    map_kd: Path | None = None
    pm: float = 0.0
    pr: float | None = None
    ni: float | None = None
    illum: int | None = None

    def to_material(self, cache: TextureCache) -> MaterialDesc:
        tex = cache.load(self.map_kd, src=self.source) if self.map_kd is not None else None
        if self.illum in GLASS_ILLUMS:
            ior = 1.5 if self.ni is None else self.ni
            rough = 0.0 if self.pr is None else self.pr
            return MaterialDesc(
                name=self.name, kind="dielectric", base_color=(1.0, 1.0, 1.0), roughness=rough,
                ior=ior, emission=self.ke, two_sided=True,
            )  # fmt: skip
        return MaterialDesc(
            name=self.name,
            kind="conductor" if self.pm >= 0.5 else "diffuse",
            base_color=self.kd,
            base_color_texture=tex,
            roughness=0.5 if self.pr is None else self.pr,
            emission=self.ke,
            two_sided=True,
        )


def parse_mtl(path: Path, warnings: list[str], *, files: SceneFiles | None = None) -> dict[str, _Mtl]:
    """Parse an MTL library; only the statements a diffuse/conductor/emitter model uses."""
    src = str(path)
    files = files or SceneFiles.beside(path)
    text = files.read(path, MTL_BYTES_MAX, "MTL library", src).decode("utf-8", errors="replace")
    out: dict[str, _Mtl] = {}
    cur: _Mtl | None = None
    ignored_maps: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kw, _, rest = line.partition(" ")
        kw, rest = kw.strip(), rest.strip()
        if kw == "newmtl":
            if not rest:
                raise SceneError(src, f"line {lineno}: 'newmtl' without a name")
            cur = out[rest] = _Mtl(rest, src)
            continue
        if cur is None:
            if kw in ("Kd", "Ke", "map_Kd", "Pm", "Pr", "Ni", "illum"):
                raise SceneError(src, f"line {lineno}: '{kw}' before any 'newmtl'")
            continue
        if kw in ("Kd", "Ke"):
            vals = rest.split()
            if vals and vals[0] in ("spectral", "xyz"):
                warnings.append(f"{src}:{lineno}: '{kw} {vals[0]}' is not supported; using the default")
                continue
            rgb = _floats(vals, src, lineno, kw, 1, 3)
            if len(rgb) == 2:
                raise SceneError(src, f"line {lineno}: '{kw}' needs 1 or 3 numbers, got 2")
            color = (rgb[0],) * 3 if len(rgb) == 1 else (rgb[0], rgb[1], rgb[2])
            if kw == "Kd":
                cur.kd = color
            else:
                cur.ke = color
        elif kw in ("Pm", "Pr"):
            (v,) = _floats(rest.split(), src, lineno, kw, 1, 1)
            if kw == "Pm":
                cur.pm = v
            else:
                cur.pr = v
        elif kw == "Ni":
            (v,) = _floats(rest.split(), src, lineno, kw, 1, 1)
            if not IOR_MIN <= v <= IOR_MAX:
                raise SceneError(src, f"line {lineno}: 'Ni {v}' is outside {IOR_MIN}..{IOR_MAX}")
            cur.ni = v
        elif kw == "illum":
            (v,) = _floats(rest.split(), src, lineno, kw, 1, 1)
            if v != int(v) or not 0 <= v <= 10:
                raise SceneError(src, f"line {lineno}: 'illum {rest}' is not a model 0..10")
            cur.illum = int(v)
        elif kw == "map_Kd":
            fname, scaled = _map_filename(rest.split(), src, lineno)
            if scaled:
                warnings.append(f"{src}:{lineno}: map_Kd options {scaled} are ignored")
            cur.map_kd = path.parent / fname.replace("\\", "/")
        elif kw.startswith(("map_", "bump", "disp", "decal", "norm", "refl")):
            ignored_maps.add(kw)
    if ignored_maps:
        maps = ", ".join(sorted(ignored_maps))
        warnings.append(f"{src}: texture maps {maps} are ignored (only map_Kd is used)")
    return out


def _floats(vals: list[str], src: str, lineno: int, kw: str, lo: int, hi: int) -> list[float]:
    if not lo <= len(vals) <= hi:
        raise SceneError(src, f"line {lineno}: '{kw}' needs {lo}..{hi} numbers, got {len(vals)}")
    try:
        return [float(v) for v in vals]
    except ValueError:
        raise SceneError(src, f"line {lineno}: cannot parse '{kw} {' '.join(vals)}'") from None


def _map_filename(tokens: list[str], src: str, lineno: int) -> tuple[str, list[str]]:
    """Split `map_Kd [-opt args...] file name` into the file name and the non-default options."""
    i, noted = 0, []
    while i < len(tokens) and tokens[i] in _MAP_OPTIONS:
        opt = tokens[i]
        n = _MAP_OPTIONS[opt]
        i += 1
        if opt in ("-o", "-s", "-t"):
            args = []
            while len(args) < n and i < len(tokens) and _is_float(tokens[i]):
                args.append(float(tokens[i]))
                i += 1
            default = 1.0 if opt == "-s" else 0.0
            if not args or any(a != default for a in args):
                noted.append(opt)
        else:
            i += n
    if i >= len(tokens):
        raise SceneError(src, f"line {lineno}: 'map_Kd' without a file name")
    return " ".join(tokens[i:]), noted


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------- OBJ


@dataclass
class _ObjGeometry:
    positions: np.ndarray
    indices: np.ndarray
    material_ids: np.ndarray
    normals: np.ndarray | None
    uvs: np.ndarray | None
    material_names: list[str]  # one per material id
    used_names: set[str] = field(default_factory=set)  # every name given to `usemtl`
    mtllibs: list[str] = field(default_factory=list)


class _Lines:
    """The byte buffer of an OBJ with its line table; numbers are 1-based original line numbers."""

    def __init__(self, data: bytes):
        raw = np.frombuffer(data, np.uint8)
        buf = np.empty(len(raw) + 1, np.uint8)
        buf[:-1] = raw
        buf[-1] = _NL  # every line, the last included, ends with a newline
        if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark: blank it
            buf[:3] = _SP
        for ctl in (b"\r", b"\t", b"\f", b"\v"):  # other blanks become spaces (memchr first: usually none)
            if data.find(ctl) >= 0:
                buf[buf == ord(ctl)] = _SP
        # Line continuations ('\' before the newline) join lines; keep line numbers right.
        self.joins = np.empty(0, np.int64)
        if data.find(b"\\") >= 0:
            bs = np.flatnonzero(buf[:-1] == 92)
            nxt = buf[bs + 1]
            nxt2 = buf[np.minimum(bs + 2, len(buf) - 1)]
            bs = bs[(nxt == _NL) | ((nxt == _SP) & (nxt2 == _NL))]  # also '\' CR LF
            nl_pos = np.where(buf[bs + 1] == _NL, bs + 1, bs + 2)
            last = nl_pos < len(buf) - 1  # the final newline (ours) ends the file, continued or not
            bs, nl_pos = bs[last], nl_pos[last]
            buf[bs] = _SP
            buf[nl_pos] = _SP
            self.joins = nl_pos
        self.buf = buf
        nl = np.flatnonzero(buf == _NL)
        self.ends = nl  # position of each line's newline
        starts = np.empty_like(nl)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        tokchar = buf > _SP  # control bytes other than the blanks above separate tokens too
        tokstart = tokchar.copy()
        tokstart[1:] &= ~tokchar[:-1]
        self.tok_count = np.add.reduceat(tokstart, starts, dtype=np.int32)  # tokens per line
        lead = np.flatnonzero(buf[starts] == _SP)
        if len(lead):  # indented lines: start at the first non-blank byte
            nonblank = np.flatnonzero(buf != _SP)
            starts[lead] = nonblank[np.searchsorted(nonblank, starts[lead])]
        self.starts = starts

    def lineno(self, i: int) -> int:
        return int(i) + 1 + int(np.searchsorted(self.joins, self.starts[i]))

    def text(self, i: int, skip: int = 0) -> str:
        """Line `i` after its first `skip` bytes (a keyword that `gather` may have blanked already)."""
        line = self.buf[self.starts[i] + skip : self.ends[i]].tobytes()
        return line.decode("utf-8", errors="replace").strip()

    def gather(self, sel: np.ndarray, skip: int) -> bytes:
        """The bodies of lines `sel` (keywords of `skip` bytes blanked), newline-separated, as one buffer.

        Lines of one kind usually come in long runs (all `v`, then all `f`), and a run of whole lines
        is one slice of the buffer, so this copies a few slices rather than masking every byte."""
        buf, starts, ends = self.buf, self.starts, self.ends
        for k in range(skip):
            buf[starts[sel] + k] = _SP
        brk = np.flatnonzero(np.diff(sel) != 1)
        first = sel[np.r_[0, brk + 1]]
        last = sel[np.r_[brk, len(sel) - 1]]
        if len(first) > GATHER_RUNS_MAX:  # many short runs: one masked copy is cheaper
            delta = np.zeros(len(buf) + 1, np.int8)
            delta[starts[first]] = 1
            delta[ends[last] + 1] -= 1
            return buf[np.cumsum(delta[:-1], dtype=np.int8).view(np.bool_)].tobytes()
        return b"".join(buf[a : b + 1].tobytes() for a, b in zip(starts[first], ends[last], strict=True))


def _parse_obj(data: bytes, src: str, warn: list[str]) -> _ObjGeometry:
    L = _Lines(data)
    buf, starts = L.buf, L.starts
    c0 = buf[starts]
    c1 = buf[np.minimum(starts + 1, len(buf) - 1)]
    c2 = buf[np.minimum(starts + 2, len(buf) - 1)]
    is_v = (c0 == _V) & (c1 == _SP)
    is_vt = (c0 == _V) & (c1 == _T) & (c2 == _SP)
    is_vn = (c0 == _V) & (c1 == _N) & (c2 == _SP)
    is_f = (c0 == _F) & (c1 == _SP)
    other = ~(is_v | is_vt | is_vn | is_f | (c0 == ord("#")) | (c0 == _NL))

    # Rare statements, one by one.
    usemtl_lines: list[int] = []
    usemtl_names: list[str] = []
    mtllibs: list[str] = []
    skipped: dict[str, int] = {}
    rare = np.flatnonzero(other)
    if len(rare) > STATEMENTS_MAX:
        problem = f"{len(rare)} lines other than v/vt/vn/f (usemtl, g, o, ...); the limit is {STATEMENTS_MAX}"
        raise SceneError(src, problem)
    for i in rare:
        line = L.text(i)
        kw, _, rest = line.partition(" ")
        kwb = kw.encode()
        if kw == "usemtl":
            usemtl_lines.append(int(i))
            usemtl_names.append(rest.strip() or DEFAULT_MATERIAL)
        elif kw == "mtllib":
            if not rest.strip():
                raise SceneError(src, f"line {L.lineno(i)}: 'mtllib' without a file name")
            for lib in _split_mtllib(rest.strip(), Path(src).parent):
                if lib not in mtllibs:
                    mtllibs.append(lib)
            if len(mtllibs) > MTLLIBS_MAX:
                raise SceneError(src, f"the OBJ names more than {MTLLIBS_MAX} material libraries")
        elif kwb in _SKIPPED:
            skipped[_SKIPPED[kwb]] = skipped.get(_SKIPPED[kwb], 0) + 1
        elif kwb in _IGNORED:
            pass
        else:
            raise SceneError(src, f"line {L.lineno(i)}: unparsable line {line[:80]!r}")
    for what, n in skipped.items():
        warn.append(f"{src}: {n} {what} skipped (only polygons are rendered)")

    V = _parse_floats(L, np.flatnonzero(is_v), 1, "v", 3, 7, 3, src)
    VT = _parse_floats(L, np.flatnonzero(is_vt), 2, "vt", 1, 3, 2, src)
    VN = _parse_floats(L, np.flatnonzero(is_vn), 2, "vn", 3, 3, 3, src)
    f_lines = np.flatnonzero(is_f)
    if len(f_lines) == 0:
        raise SceneError(src, "the OBJ has no faces ('f' lines)")
    n_per_face = L.tok_count[f_lines].astype(np.int64) - 1
    bad = np.flatnonzero(n_per_face < 3)
    if len(bad):
        i = f_lines[bad[0]]
        problem = f"face with {n_per_face[bad[0]]} vertices (needs at least 3)"
        raise SceneError(src, f"line {L.lineno(i)}: {problem}")
    n_tris = int(n_per_face.sum() - 2 * len(f_lines))
    if n_tris > TRIS_MAX:
        raise SceneError(src, f"{n_tris} triangles is more than the limit of {TRIS_MAX}")

    vi, ti, ni = _parse_faces(L, f_lines, n_per_face, src)
    tok_line = np.repeat(f_lines, n_per_face)  # line index of every vertex reference
    vi = _resolve(vi, L, tok_line, is_v, len(V), "vertex", src, required=True)
    ti = _resolve(ti, L, tok_line, is_vt, len(VT), "texture coordinate", src) if ti is not None else None
    ni = _resolve(ni, L, tok_line, is_vn, len(VN), "normal", src) if ni is not None else None

    # Unique (v, vt, vn) triples; a missing vt/vn (mixed forms) points at an appended zero row.
    positions, normals, uvs = V, None, None
    if ti is not None:
        VT = np.vstack([VT, np.zeros((1, 2))])
    if ni is not None:
        VN = np.vstack([VN, np.zeros((1, 3))])
    cols = [c for c in (ti, ni) if c is not None]
    if not cols or all(np.array_equal(c, vi) for c in cols):
        vert = vi
        if ti is not None:
            uvs = _pad(VT, len(V))
        if ni is not None:
            normals = _pad(VN, len(V))
    else:
        key, span = vi, len(V)
        for c, size in ((ti, len(VT)), (ni, len(VN))):
            if c is not None:
                key, span = key * size + c, span * size
        if span >= 1 << 62:  # the packed key would overflow int64: compare rows instead
            key = np.stack([vi] + cols, axis=1)
        _, first, vert = np.unique(
            key, axis=0 if key.ndim == 2 else None, return_index=True, return_inverse=True
        )
        vert = vert.reshape(-1)
        positions = V[vi[first]]
        if ti is not None:
            uvs = VT[ti[first]]
        if ni is not None:
            normals = VN[ni[first]]

    tri_tok, tri_face = fan_triangulate(n_per_face)
    indices = vert[tri_tok].astype(np.int32)

    # Materials: the last `usemtl` before each face line; slot 0.. in order of first use.
    ul = np.asarray(usemtl_lines, np.int64)
    which = np.searchsorted(ul, f_lines, side="right") - 1  # -1: before any usemtl
    names = [DEFAULT_MATERIAL] + usemtl_names
    slot_of_name: dict[str, int] = {}
    slot_of_directive = np.array([slot_of_name.setdefault(n, len(slot_of_name)) for n in names], np.int64)
    face_slot = slot_of_directive[which + 1]
    used, face_mat = np.unique(face_slot, return_inverse=True)
    by_slot = {s: n for n, s in slot_of_name.items()}
    if uvs is not None:
        uvs = uvs.astype(np.float32)
        uvs[:, 1] = 1.0 - uvs[:, 1]  # OBJ v points up; MeshData uses the glTF convention
    return _ObjGeometry(
        positions=np.ascontiguousarray(positions, np.float32),
        indices=indices,
        material_ids=face_mat.reshape(-1)[tri_face].astype(np.int32),
        normals=None if normals is None else np.ascontiguousarray(normals, np.float32),
        uvs=uvs,
        material_names=[by_slot[int(s)] for s in used],
        used_names=set(usemtl_names),
        mtllibs=mtllibs,
    )


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    if len(a) >= n:
        return a[:n]
    return np.vstack([a, np.zeros((n - len(a), a.shape[1]))])


def fan_triangulate(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polygons with `counts` corners, stored one after another, as fan triangles.

    Returns (T, 3) positions into the flat corner list and, per triangle, its polygon index."""
    counts = np.asarray(counts, np.int64)
    if len(counts) and np.all(counts == 3):
        return np.arange(3 * len(counts), dtype=np.int64).reshape(-1, 3), np.arange(len(counts))
    m = np.maximum(counts - 2, 0)
    poly = np.repeat(np.arange(len(counts)), m)
    first = (np.cumsum(counts) - counts)[poly]
    j = np.arange(len(poly)) - np.repeat(np.cumsum(m) - m, m)
    return np.stack([first, first + j + 1, first + j + 2], axis=1), poly


def _parse_floats(
    L: _Lines, sel: np.ndarray, skip: int, kw: str, lo: int, hi: int, keep: int, src: str
) -> np.ndarray:
    """Numbers of `kw` lines `sel` as (len(sel), keep) float64; missing trailing values are 0."""
    if len(sel) == 0:
        return np.zeros((0, keep))
    n = L.tok_count[sel].astype(np.int64) - 1
    bad = np.flatnonzero((n < lo) | (n > hi))
    if len(bad):
        i = sel[bad[0]]
        want = f"{lo}" if lo == hi else f"{lo} to {hi}"
        line = f"{kw} {L.text(i, skip)}"[:80]
        raise SceneError(src, f"line {L.lineno(i)}: '{kw}' needs {want} numbers: {line!r}")
    text = L.gather(sel, skip)
    vals = _decimals(text, int(n.sum()))
    if vals is None:
        vals = _fromstring(text, np.float64, int(n.sum()))
    if vals is None:
        _raise_first_bad(L, sel, skip, src, kw, float)
    if np.all(n == keep):
        return vals.reshape(-1, keep)
    off = np.cumsum(n) - n
    k = np.arange(keep)
    take = off[:, None] + np.minimum(k, n[:, None] - 1)
    return np.where(k < n[:, None], vals[take], 0.0)


def _decimals(text: bytes, expected: int) -> np.ndarray | None:
    """Fast path for plain decimals (`-0.123456`, one '.' per number, no exponent): drop the dots,
    parse integers (several times faster than floats in numpy) and divide by 10^(digits after
    the dot). Exact for up to 15 significant digits, as the division is correctly rounded.
    None when the text is not all such numbers: the caller parses floats instead."""
    b = np.frombuffer(text, np.uint8)
    dots = np.flatnonzero(b == 46)
    if len(dots) != expected:
        return None
    edges = np.flatnonzero(np.diff(np.r_[False, b > _SP, False].view(np.int8)))
    if len(edges) != 2 * expected:
        return None
    starts, ends = edges[0::2], edges[1::2]
    # number j's dot lies inside it, and the digits fit int64 (18 digits, a sign and a dot)
    if not np.all((dots >= starts) & (dots < ends) & (ends - starts <= DECIMAL_CHARS_MAX)):
        return None
    ints = _fromstring(text.replace(b".", b""), np.int64, expected)
    if ints is None:
        return None
    return ints / _POW10[ends - dots - 1]


def _fromstring(text: bytes, dtype, expected: int) -> np.ndarray | None:
    """All whitespace-separated numbers of `text`, or None unless there are exactly `expected`."""
    b = np.frombuffer(text, np.uint8)
    sign = np.flatnonzero((b == 45) | (b == 43))
    if len(sign) and np.any(b[sign + 1] <= _SP):  # a lone sign: numpy would read it as 0
        return None
    try:
        vals = np.fromstring(text, dtype=dtype, sep=" ")
    except ValueError:
        return None
    return vals if len(vals) == expected else None


def _raise_first_bad(L: _Lines, sel: np.ndarray, skip: int, src: str, kw: str, conv) -> None:
    for i in sel:
        line = f"{kw} {L.text(i, skip)}"
        try:
            for tok in line.split()[1:]:
                if tok in ("-", "+"):
                    raise ValueError
                conv(tok)
        except ValueError:
            raise SceneError(src, f"line {L.lineno(i)}: cannot parse {kw!r} line {line[:80]!r}") from None
    raise SceneError(src, f"cannot parse the '{kw}' lines")  # not reached: some line failed above


def _parse_faces(L: _Lines, f_lines: np.ndarray, n: np.ndarray, src: str):
    """Raw 1-based/negative indices per vertex reference: (v, vt or None, vn or None); 0 = absent."""
    text = L.gather(f_lines, 1)
    total = int(n.sum())
    fb = np.frombuffer(text, np.uint8)
    tokchar = fb > _SP
    edges = np.flatnonzero(np.diff(np.r_[False, tokchar, False].view(np.int8)))
    sp = np.flatnonzero(fb == _SLASH)
    s = len(sp) // total
    if len(edges) == 2 * total and len(sp) == s * total and s <= 2:
        # Every reference has the same form iff the j-th slash lies in reference j // s.
        same = True
        d = 0
        if s:
            tok = np.arange(len(sp)) // s
            same = bool(np.all((sp >= edges[0::2][tok]) & (sp < edges[1::2][tok])))
            if same and s == 2:
                adjacent = sp[1::2] == sp[0::2] + 1  # 'v//vn'
                d = int(adjacent[0])
                same = bool(np.all(adjacent == adjacent[0]))
        if same:
            k = {0: 1, 1: 2, 2: 3 - d}[s]
            vals = _fromstring(text.replace(b"/", b" "), np.int64, total * k)
            if vals is not None:
                vals = vals.reshape(total, k)
                vt = vals[:, 1] if s >= 1 and d == 0 else None
                vn = vals[:, -1] if s == 2 else None
                return vals[:, 0], vt, vn
    return _parse_faces_slow(L, f_lines, total, src)


def _parse_faces_slow(L: _Lines, f_lines: np.ndarray, total: int, src: str):
    out = np.zeros((total, 3), np.int64)
    j = 0
    for i in f_lines:
        line = f"f {L.text(i, 1)}"
        for tok in line.split()[1:]:
            parts = tok.split("/")
            try:
                if len(parts) > 3 or not parts[0]:
                    raise ValueError
                out[j, 0] = int(parts[0])
                if len(parts) > 1 and parts[1]:
                    out[j, 1] = int(parts[1])
                if len(parts) > 2:
                    if not parts[2]:
                        raise ValueError
                    out[j, 2] = int(parts[2])
            except (ValueError, OverflowError):  # overflow: an index past int64, out of range anyway
                problem = f"cannot parse face vertex {tok[:40]!r} in {line[:80]!r}"
                raise SceneError(src, f"line {L.lineno(i)}: {problem}") from None
            j += 1
    vt = out[:, 1] if out[:, 1].any() else None
    vn = out[:, 2] if out[:, 2].any() else None
    return out[:, 0], vt, vn


def _resolve(
    idx: np.ndarray,
    L: _Lines,
    tok_line: np.ndarray,
    is_kind: np.ndarray,
    count: int,
    what: str,
    src: str,
    required: bool = False,
) -> np.ndarray:
    """1-based / negative (relative) OBJ indices to 0-based; absent (0) maps to `count` (a zero row)."""
    out = idx - 1
    neg = idx < 0
    if neg.any():
        before = np.cumsum(is_kind)[tok_line[neg]]  # elements defined above each reference
        out[neg] = before + idx[neg]
    absent = idx == 0
    bad = (out < 0) | (out >= count)
    if required:
        bad |= absent
    else:
        bad &= ~absent
        out[absent] = count
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        line = int(tok_line[j])
        if idx[j] == 0:
            problem = f"{what} index 0 (OBJ indices start at 1)"
        else:
            plural = {"vertex": "vertices"}.get(what, what + "s")
            problem = f"{what} index {int(idx[j])} is out of range (the file has {count} {plural})"
        raise SceneError(src, f"line {L.lineno(line)}: {problem}")
    return out


# ----------------------------------------------------------------------------------- helpers


def _split_mtllib(value: str, base: Path) -> list[str]:
    """`mtllib a.mtl b.mtl` names several files; a single name with spaces is kept whole if it exists."""
    value = value.replace("\\", "/")
    try:
        whole = " " in value and (base / value).is_file()
    except (OSError, ValueError):  # a name too long for the file system (ENAMETOOLONG), a NUL: not a file
        whole = False
    return [value] if whole else value.split()


def _directive_values(data: bytes, kw: bytes, src: str) -> list[str]:
    """Rest-of-line values of every line that starts with `kw` (found by substring search)."""
    out, pos, seen = [], 0, 0
    while (pos := data.find(kw, pos)) >= 0:
        seen += 1
        if seen > STATEMENTS_MAX:
            raise SceneError(src, f"more than {STATEMENTS_MAX} '{kw.decode()}' statements")
        line_start = data.rfind(b"\n", 0, pos) + 1
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        after = data[pos + len(kw) : pos + len(kw) + 1]
        if not data[line_start:pos].strip() and after in (b" ", b"\t"):
            out.append(data[pos + len(kw) : end].decode("utf-8", errors="replace").strip())
        pos = end
    return out

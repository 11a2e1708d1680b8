"""glTF 2.0 (`.gltf` with external or `data:` buffers, and binary `.glb`) to `MeshData`.

How: the JSON (or a GLB's JSON chunk) is decoded by msgspec straight into the Structs below,
so a wrong type anywhere is reported with its path (`$.accessors[3].count`). The default scene's
node tree is walked with world matrices (TRS or column-major `matrix`); every node with a mesh
gives one `MeshData` in world space (two when only some of its primitives have normals): normals
by the inverse transpose, winding flipped under a mirroring transform. Accessors are read with
numpy views over the buffer (any component type, normalized integers, byteStride, sparse
substitution), each range checked against its bufferView and buffer first.

Materials: baseColorFactor (x baseColorTexture, uint8 sRGB), metallic >= 0.5 is a conductor with
the roughness, else diffuse; emissiveFactor x KHR_materials_emissive_strength is the emission;
`doubleSided` (default false) is `two_sided`: a one-sided material's back side is black.
A metallicRoughnessTexture or emissiveTexture cannot be applied per texel, so it is reduced to
its mean, which keeps e.g. a leather material with a metal factor of 1 (the default) diffuse.
KHR_texture_transform and texCoord sets are applied to each primitive's UVs.

Anything that would render wrongly is a SceneError naming the file and the feature: required
extensions we lack (Draco, meshopt, BasisU, ...), point/line modes, URIs with a scheme other
than `data:` (remote or `file:`). Files are read through `SceneFiles`: a buffer or image URI
that leads outside the scene's folder tree (absolute, `../`, a symlink) is refused. Budgets
checked before allocating: the JSON's size and container count, each buffer's and all buffers'
bytes, accessor counts (x stride within their bufferView), node depth and cycles. What can be
rendered without (normal/occlusion maps, alpha, skins, morph targets, cameras, animations,
punctual lights, other material extensions) is listed in `warnings`.

The reader is our own rather than pygltflib: it is a hundred lines on top of msgspec, which
validates every field we use with a precise path; pygltflib would be an extra dependency that
still leaves accessor decoding, range checks and GLB truncation checks to us.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import struct
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote

import msgspec
import numpy as np
from msgspec import Meta, Struct

from ..errors import MissingAssetsError, SceneError
from .confine import SceneFiles
from .images import TextureCache, decode_image_bytes, srgb_to_linear
from .obj import TRIS_MAX
from .types import MaterialDesc, MeshData, TextureImage

GLB_MAGIC = b"glTF"
GLB_JSON, GLB_BIN = 0x4E4F534A, 0x004E4942
GLTF_JSON_BYTES_MAX = 64 << 20  # the JSON of even a huge scene is a few MB; more is garbage
GLTF_BUFFER_BYTES_MAX = 1 << 32  # GLB lengths are 32-bit; no valid buffer is larger
GLTF_BUFFERS_BYTES_MAX = 1 << 33  # all buffers of one asset: twice the largest GLB
GLB_BYTES_MAX = GLTF_BUFFER_BYTES_MAX + GLTF_JSON_BYTES_MAX + 64  # a whole GLB: JSON + BIN + headers
GLTF_JSON_CONTAINERS_MAX = 1 << 21  # '{' and '[' in the JSON: each decodes to a Python object (~200 B)
ZERO_ACCESSOR_ELEMENTS_MAX = 1 << 22  # an accessor with no bufferView is zeros: allocated from nothing
ACCESSOR_COUNT_MAX = 1 << 28  # elements per accessor; 268M is far past TRIS_MAX's worth of vertices
NODE_DEPTH_MAX = 1024  # node trees deeper than this are cycles or machine-made garbage

# Required extensions we implement; any other required one is refused.
SUPPORTED_REQUIRED = {"KHR_materials_emissive_strength", "KHR_mesh_quantization", "KHR_texture_transform"}
# Used (not required) extensions that change nothing we render, or that we apply.
SILENT_EXTENSIONS = SUPPORTED_REQUIRED | {"KHR_materials_variants", "KHR_xmp_json_ld", "KHR_xmp"}

_COMPONENTS = {5120: "i1", 5121: "u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
_NORM_DIV = {5120: 127.0, 5121: 255.0, 5122: 32767.0, 5123: 65535.0}
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_MODES = {
    0: "POINTS",
    1: "LINES",
    2: "LINE_LOOP",
    3: "LINE_STRIP",
    4: "TRIANGLES",
    5: "TRIANGLE_STRIP",
    6: "TRIANGLE_FAN",
}
_WRAP_REPEAT = 10497

Index = Annotated[int, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]


class _Asset(Struct):
    version: str
    minVersion: str | None = None


class _SparseIndices(Struct):
    bufferView: Index
    componentType: int
    byteOffset: Count = 0


class _SparseValues(Struct):
    bufferView: Index
    byteOffset: Count = 0


class _Sparse(Struct):
    count: Annotated[int, Meta(ge=1)]
    indices: _SparseIndices
    values: _SparseValues


class _Accessor(Struct):
    componentType: int
    count: Annotated[int, Meta(ge=1)]
    type: str
    bufferView: Index | None = None
    byteOffset: Count = 0
    normalized: bool = False
    sparse: _Sparse | None = None


class _BufferView(Struct):
    buffer: Index
    byteLength: Annotated[int, Meta(ge=1)]
    byteOffset: Count = 0
    byteStride: Annotated[int, Meta(ge=4, le=252)] | None = None


class _Buffer(Struct):
    byteLength: Annotated[int, Meta(ge=1)]
    uri: str | None = None


class _Image(Struct):
    uri: str | None = None
    mimeType: str | None = None
    bufferView: Index | None = None
    name: str | None = None


class _Sampler(Struct):
    wrapS: int = _WRAP_REPEAT
    wrapT: int = _WRAP_REPEAT


class _Texture(Struct):
    source: Index | None = None
    sampler: Index | None = None
    extensions: dict[str, Any] = {}


class _TextureInfo(Struct):
    index: Index
    texCoord: Count = 0
    extensions: dict[str, Any] = {}


class _Pbr(Struct):
    baseColorFactor: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    baseColorTexture: _TextureInfo | None = None
    metallicFactor: float = 1.0
    roughnessFactor: float = 1.0
    metallicRoughnessTexture: _TextureInfo | None = None


class _Material(Struct):
    name: str | None = None
    pbrMetallicRoughness: _Pbr | None = None
    normalTexture: _TextureInfo | None = None
    occlusionTexture: _TextureInfo | None = None
    emissiveTexture: _TextureInfo | None = None
    emissiveFactor: tuple[float, float, float] = (0.0, 0.0, 0.0)
    alphaMode: str = "OPAQUE"
    doubleSided: bool = False
    extensions: dict[str, Any] = {}


class _Primitive(Struct):
    attributes: dict[str, Index]
    indices: Index | None = None
    material: Index | None = None
    mode: int = 4
    targets: list[dict[str, Index]] | None = None
    extensions: dict[str, Any] = {}


class _Mesh(Struct):
    primitives: list[_Primitive]
    name: str | None = None


class _Node(Struct):
    name: str | None = None
    children: list[Index] = []
    mesh: Index | None = None
    skin: Index | None = None
    camera: Index | None = None
    matrix: tuple[float, ...] | None = None
    translation: tuple[float, float, float] | None = None
    rotation: tuple[float, float, float, float] | None = None
    scale: tuple[float, float, float] | None = None
    extensions: dict[str, Any] = {}


class _Scene(Struct):
    nodes: list[Index] = []


class _Doc(Struct):
    asset: _Asset
    scene: Index | None = None
    scenes: list[_Scene] = []
    nodes: list[_Node] = []
    meshes: list[_Mesh] = []
    accessors: list[_Accessor] = []
    bufferViews: list[_BufferView] = []
    buffers: list[_Buffer] = []
    materials: list[_Material] = []
    textures: list[_Texture] = []
    images: list[_Image] = []
    samplers: list[_Sampler] = []
    skins: list[Any] = []
    animations: list[Any] = []
    cameras: list[Any] = []
    extensionsUsed: list[str] = []
    extensionsRequired: list[str] = []


def load_gltf(
    path: str | os.PathLike,
    *,
    warnings: list[str] | None = None,
    textures: TextureCache | None = None,
    files: SceneFiles | None = None,
) -> list[MeshData]:
    """Every mesh instance of the default scene, in world space. Missing files: one MissingAssetsError.
    `files` confines what it reads (default: to the asset's own folder)."""
    path = Path(path)
    files = files or (textures.files if textures is not None else None) or SceneFiles.beside(path)
    warn = warnings if warnings is not None else []
    return _Loader(path, warn, textures or TextureCache(files), files).load()


def referenced_files(path: str | os.PathLike, *, files: SceneFiles | None = None) -> list[Path]:
    """External files the asset needs: buffers, and the images of the textures we sample."""
    path = Path(path)
    files = files or SceneFiles.beside(path)
    doc, _ = _read_document(path, files, json_only=True)
    return [p for p in _external_files(doc, path) if p is not None]


# ---------------------------------------------------------------------------------- reading


def _read_document(path: Path, files: SceneFiles, json_only: bool = False) -> tuple[_Doc, bytes | None]:
    """The decoded JSON and, for a GLB, its BIN chunk (None when json_only or absent)."""
    src = str(path)
    head = files.read(path, GLB_BYTES_MAX, "glTF file", src, head=12)
    if head[:4] == GLB_MAGIC:
        if json_only:
            data = files.read(path, GLB_BYTES_MAX, "glTF file", src, head=20)
            if len(data) >= 20:
                (jlen,) = struct.unpack_from("<I", data, 12)
                want = 20 + min(jlen, GLTF_JSON_BYTES_MAX + 1)
                data = files.read(path, GLB_BYTES_MAX, "glTF file", src, head=want)
        else:
            data = files.read(path, GLB_BYTES_MAX, "glTF file", src)
    else:
        data = files.read(path, GLTF_JSON_BYTES_MAX, "glTF JSON", src)
    bin_chunk = None
    if data[:4] == GLB_MAGIC:
        json_bytes, bin_chunk = _split_glb(data, src, json_only)
    else:
        json_bytes = data
    containers = json_bytes.count(b"{") + json_bytes.count(b"[")
    if containers > GLTF_JSON_CONTAINERS_MAX:
        raise SceneError(
            src, f"glTF JSON has {containers} objects and arrays; the limit is {GLTF_JSON_CONTAINERS_MAX}"
        )
    try:
        doc = msgspec.json.decode(json_bytes, type=_Doc)
    except msgspec.ValidationError as e:
        raise SceneError(src, f"invalid glTF: {e}") from None
    except msgspec.DecodeError as e:
        raise SceneError(src, f"invalid glTF JSON: {e}") from None
    except RecursionError:
        raise SceneError(src, "invalid glTF JSON: nested too deeply") from None
    if not doc.asset.version.startswith("2."):
        raise SceneError(src, f"glTF version {doc.asset.version} is not supported (only 2.x)")
    if doc.asset.minVersion and doc.asset.minVersion not in ("2.0",):
        raise SceneError(src, f"glTF asset needs version {doc.asset.minVersion}; only 2.0 is supported")
    return doc, bin_chunk


def _split_glb(data: bytes, src: str, json_only: bool) -> tuple[bytes, bytes | None]:
    if len(data) < 20:
        raise SceneError(src, "truncated GLB: shorter than its 20-byte header")
    _, version, length = struct.unpack_from("<4sII", data, 0)
    if version != 2:
        raise SceneError(src, f"GLB container version {version} is not supported (only 2)")
    if not json_only and length > len(data):
        raise SceneError(src, f"truncated GLB: the header says {length} bytes, the file has {len(data)}")
    pos, json_bytes, bin_chunk = 12, None, None
    while pos + 8 <= (len(data) if json_only else length):
        clen, ctype = struct.unpack_from("<II", data, pos)
        if pos + 8 + clen > (len(data) if json_only else length):
            raise SceneError(src, f"truncated GLB: chunk at byte {pos} of {clen} bytes runs past the end")
        chunk = data[pos + 8 : pos + 8 + clen]
        if json_bytes is None:
            if ctype != GLB_JSON:
                raise SceneError(src, "malformed GLB: the first chunk is not JSON")
            if clen > GLTF_JSON_BYTES_MAX:
                raise SceneError(src, f"GLB JSON chunk is larger than {GLTF_JSON_BYTES_MAX} bytes")
            json_bytes = chunk
            if json_only:
                break
        elif ctype == GLB_BIN and bin_chunk is None:
            bin_chunk = chunk
        pos += 8 + clen + (-clen % 4)
    if json_bytes is None:
        raise SceneError(src, "malformed GLB: no JSON chunk")
    return json_bytes, bin_chunk


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _uri_path(uri: str, base: Path, src: str) -> Path | None:
    """The local file a URI names, or None for a data: URI."""
    if uri.startswith("data:"):
        return None
    if _SCHEME.match(uri) or uri.startswith("//"):
        shown = uri if len(uri) <= 80 else uri[:77] + "..."
        raise SceneError(
            src, f"URI '{shown}' is not supported (only relative file paths and data: URIs)"
        )
    return base / unquote(uri)


def _used_texture_infos(doc: _Doc) -> list[_TextureInfo]:
    """Texture references whose images we read: base colour, metallic-roughness, emissive."""
    out = []
    for m in doc.materials:
        pbr = m.pbrMetallicRoughness
        if pbr is not None:
            out += [t for t in (pbr.baseColorTexture, pbr.metallicRoughnessTexture) if t is not None]
        if m.emissiveTexture is not None:
            out.append(m.emissiveTexture)
    return out


def _external_files(doc: _Doc, path: Path) -> list[Path | None]:
    src, base = str(path), path.parent
    out = [_uri_path(b.uri, base, src) for b in doc.buffers if b.uri is not None]
    for info in _used_texture_infos(doc):
        tex = _get(doc.textures, info.index, "texture", src)
        if tex.source is not None:
            img = _get(doc.images, tex.source, "image", src)
            if img.uri is not None:
                out.append(_uri_path(img.uri, base, src))
    return out


def _get(items: list, i: int, what: str, src: str):
    if not 0 <= i < len(items):
        raise SceneError(src, f"{what} {i} does not exist (the file has {len(items)} {what}s)")
    return items[i]


# ---------------------------------------------------------------------------------- loading


class _Loader:
    def __init__(self, path: Path, warnings: list[str], textures: TextureCache, files: SceneFiles):
        self.path, self.src, self.base = path, str(path), path.parent
        self.warn = warnings
        self.textures = textures
        self.files = files
        self._files_read: dict[str, bytes] = {}  # by real path: buffers naming one file share it
        self._buffer_bytes = 0
        self._notes: dict[str, int] = {}
        self._buffers: dict[int, bytes] = {}
        self._images: dict[int, TextureImage] = {}
        self._materials: dict[int | None, tuple[MaterialDesc, int, np.ndarray | None]] = {}
        self._prims: dict[int, dict[bool, list]] = {}  # mesh index -> decoded primitives by "has normals"

    def note(self, what: str) -> None:
        """An ignored feature; reported once per file with a count."""
        self._notes[what] = self._notes.get(what, 0) + 1

    def load(self) -> list[MeshData]:
        doc, self.bin = _read_document(self.path, self.files)
        self.doc = doc
        unsupported = [e for e in doc.extensionsRequired if e not in SUPPORTED_REQUIRED]
        if unsupported:
            raise SceneError(self.src, f"requires unsupported glTF extension(s): {', '.join(unsupported)}")
        missing = sorted(
            {
                str(p)
                for p in _external_files(doc, self.path)
                if p is not None and not self.files.exists(p, "glTF buffer or image", self.src)
            }
        )
        if missing:
            raise MissingAssetsError(self.src, missing)
        for ext in doc.extensionsUsed:
            if ext not in SILENT_EXTENSIONS:
                self.note(f"extension {ext} (ignored)")
        for what, items in (("skins", doc.skins), ("animations", doc.animations), ("cameras", doc.cameras)):
            if items:
                self.warn.append(
                    f"{self.src}: {len(items)} {what} ignored"
                    + (" (skinned meshes are drawn in their bind pose)" if what == "skins" else "")
                )

        meshes: list[MeshData] = []
        tris = 0
        for node_i, world in self._instances():
            node = doc.nodes[node_i]
            mesh_i = node.mesh
            assert mesh_i is not None
            mesh = _get(doc.meshes, mesh_i, "mesh", self.src)
            label = mesh.name or node.name or f"mesh{mesh_i}"
            for m in self._mesh(mesh_i, mesh, label, world):
                tris += len(m.indices)
                if tris > TRIS_MAX:
                    raise SceneError(self.src, f"more than {TRIS_MAX} triangles")
                meshes.append(m)
        for what, n in self._notes.items():
            self.warn.append(f"{self.src}: {what}" + (f" x{n}" if n > 1 else ""))
        if not meshes:
            raise SceneError(self.src, "the glTF scene has no meshes")
        return meshes

    # --- node graph

    def _instances(self) -> list[tuple[int, np.ndarray]]:
        doc = self.doc
        if doc.scenes:
            scene_i = doc.scene if doc.scene is not None else 0
            roots = _get(doc.scenes, scene_i, "scene", self.src).nodes
        else:  # no scenes: every node that is nobody's child is a root
            children = {c for n in doc.nodes for c in n.children}
            roots = [i for i in range(len(doc.nodes)) if i not in children]
            self.warn.append(f"{self.src}: no 'scenes'; rendering every root node")
        out: list[tuple[int, np.ndarray]] = []
        seen: set[int] = set()
        stack = [(r, np.eye(4), 0) for r in reversed(roots)]
        while stack:
            i, parent, depth = stack.pop()
            node = _get(doc.nodes, i, "node", self.src)
            if i in seen:
                raise SceneError(
                    self.src, f"node {i} appears twice in the node tree (a cycle or a shared child)"
                )
            if depth > NODE_DEPTH_MAX:
                raise SceneError(self.src, f"node tree deeper than {NODE_DEPTH_MAX}")
            seen.add(i)
            world = parent @ self._local(node, i)
            if node.mesh is not None:
                out.append((i, world))
            if "EXT_mesh_gpu_instancing" in node.extensions:
                self.note("EXT_mesh_gpu_instancing (only the base instance is drawn)")
            stack.extend((c, world, depth + 1) for c in reversed(node.children))
        return out

    def _local(self, node: _Node, i: int) -> np.ndarray:
        if node.matrix is not None:
            if len(node.matrix) != 16:
                raise SceneError(self.src, f"node {i}: matrix has {len(node.matrix)} numbers, not 16")
            m = np.array(node.matrix, np.float64).reshape(4, 4).T  # column-major
            if not np.all(np.isfinite(m)):
                raise SceneError(self.src, f"node {i}: matrix is not finite")
            return m
        m = np.eye(4)
        if node.scale is not None:
            m = np.diag([*node.scale, 1.0]) @ m
        if node.rotation is not None:
            x, y, z, w = node.rotation
            n = math.sqrt(x * x + y * y + z * z + w * w)
            if not n > 0 or not math.isfinite(n):
                raise SceneError(self.src, f"node {i}: rotation quaternion {node.rotation} is not a rotation")
            x, y, z, w = x / n, y / n, z / n, w / n
            r = np.eye(4)
            r[:3, :3] = [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
            m = r @ m
        if node.translation is not None:
            t = np.eye(4)
            t[:3, 3] = node.translation
            m = t @ m
        if not np.all(np.isfinite(m)):
            raise SceneError(self.src, f"node {i}: transform is not finite")
        return m

    # --- meshes

    def _mesh(self, mesh_i: int, mesh: _Mesh, label: str, world: np.ndarray) -> list[MeshData]:
        """The mesh placed by `world`; its primitives are decoded once however often it is instanced."""
        lin = world[:3, :3]
        det = float(np.linalg.det(lin))
        if not math.isfinite(det):
            raise SceneError(self.src, f"mesh '{label}': its node transform is not finite")
        if abs(det) < 1e-300:  # zero scale: glTF's way to hide a node
            self.note("nodes with a zero scale (not drawn)")
            return []
        groups = self._prims.get(mesh_i)
        if groups is None:
            groups = {True: [], False: []}  # by "has normals"
            for pi, prim in enumerate(mesh.primitives):
                got = self._primitive(prim, f"mesh '{label}' primitive {pi}")
                if got is not None:
                    groups[got[1] is not None].append(got)
            self._prims[mesh_i] = groups
        out = []
        normal_m = np.linalg.inv(lin).T
        for has_normals, prims in groups.items():
            if not prims:
                continue
            name = f"{self.path.name}:{label}"
            if groups[not has_normals] and not has_normals:
                name += " (flat)"
            mats: list[MaterialDesc] = []
            mat_slot: dict[int, int] = {}
            P, N, UV, IDX, MID = [], [], [], [], []
            off = 0
            for pos, nrm, uv, tris, mat in prims:
                slot = mat_slot.setdefault(id(mat), len(mats))
                if slot == len(mats):
                    mats.append(mat)
                P.append(pos)
                N.append(nrm)
                UV.append(uv)
                IDX.append(tris + off)
                MID.append(np.full(len(tris), slot, np.int32))
                off += len(pos)
            pos = np.concatenate(P) @ lin.T + world[:3, 3]
            idx = np.concatenate(IDX)
            if det < 0:
                idx = idx[:, [0, 2, 1]]
            normals = None
            if has_normals:
                n = np.concatenate(N) @ normal_m.T
                length = np.linalg.norm(n, axis=1, keepdims=True)
                normals = np.divide(n, length, out=np.zeros_like(n), where=length > 0).astype(np.float32)
            uvs = None
            if any(u is not None for u in UV):
                uvs = np.concatenate(
                    [u if u is not None else np.zeros((len(p), 2)) for u, p in zip(UV, P, strict=True)]
                ).astype(np.float32)
            out.append(
                MeshData(
                    name=name,
                    positions=pos.astype(np.float32),
                    indices=idx.astype(np.int32),
                    material_ids=np.concatenate(MID),
                    materials=mats,
                    normals=normals,
                    uvs=uvs,
                )
            )
        return out

    def _primitive(self, prim: _Primitive, what: str):
        """(positions, normals or None, uvs or None, (T,3) triangles, material) or None to skip."""
        mode = _MODES.get(prim.mode)
        if mode is None:
            raise SceneError(self.src, f"{what}: unknown primitive mode {prim.mode}")
        if prim.mode < 4:
            raise SceneError(self.src, f"{what}: primitive mode {mode} is not supported (only triangles)")
        if "KHR_draco_mesh_compression" in prim.extensions:
            raise SceneError(self.src, f"{what}: KHR_draco_mesh_compression is not supported")
        if "POSITION" not in prim.attributes:
            self.note("primitive without POSITION (skipped)")
            return None
        if prim.targets:
            self.note("morph targets (ignored; the base shape is drawn)")
        if "JOINTS_0" in prim.attributes:
            self.note("skinning attributes (ignored)")
        pos = self._accessor(prim.attributes["POSITION"], f"{what} POSITION", ("VEC3",))
        nv = len(pos)
        nrm = None
        if "NORMAL" in prim.attributes:
            nrm = self._accessor(prim.attributes["NORMAL"], f"{what} NORMAL", ("VEC3",))
            if len(nrm) != nv:
                raise SceneError(self.src, f"{what}: NORMAL has {len(nrm)} elements, POSITION has {nv}")
        mat, uv_set, uv_xform = self._material(prim.material)
        uv = None
        key = f"TEXCOORD_{uv_set}"
        if key in prim.attributes:
            uv = self._accessor(prim.attributes[key], f"{what} {key}", ("VEC2",))
            if len(uv) != nv:
                raise SceneError(self.src, f"{what}: {key} has {len(uv)} elements, POSITION has {nv}")
            if uv_xform is not None:
                uv = uv @ uv_xform[:2, :2].T + uv_xform[:2, 2]
        elif mat.base_color_texture is not None:
            self.note(f"textured material without {key} (texture sampled at uv 0,0)")
        if prim.indices is not None:
            idx = self._accessor(prim.indices, f"{what} indices", ("SCALAR",), (5121, 5123, 5125))
            idx = idx.reshape(-1).astype(np.int64)
            if len(idx) and (idx.max() >= nv):
                raise SceneError(self.src, f"{what}: index {int(idx.max())} is out of range ({nv} vertices)")
        else:
            idx = np.arange(nv, dtype=np.int64)
        tris = self._triangles(idx, prim.mode, what)
        return pos, nrm, uv, tris, mat

    def _triangles(self, idx: np.ndarray, mode: int, what: str) -> np.ndarray:
        n = len(idx)
        if mode == 4:
            if n % 3:
                raise SceneError(self.src, f"{what}: {n} triangle indices is not a multiple of 3")
            return idx.reshape(-1, 3)
        if n < 3:
            return np.zeros((0, 3), np.int64)
        i = np.arange(n - 2)
        if mode == 5:  # strip: every other triangle is reversed to keep the winding
            odd = i % 2
            return np.stack([idx[i], idx[i + 1 + odd], idx[i + 2 - odd]], axis=1)
        return np.stack([idx[i + 1], idx[i + 2], np.full(n - 2, idx[0])], axis=1)  # fan

    # --- accessors and buffers

    def _buffer(self, i: int) -> bytes:
        got = self._buffers.get(i)
        if got is not None:
            return got
        b = _get(self.doc.buffers, i, "buffer", self.src)
        if b.byteLength > GLTF_BUFFER_BYTES_MAX:
            raise SceneError(
                self.src, f"buffer {i} is {b.byteLength} bytes; the limit is {GLTF_BUFFER_BYTES_MAX}"
            )
        if b.uri is None:
            if self.bin is None:
                raise SceneError(self.src, f"buffer {i} has no uri and there is no GLB binary chunk")
            data = self.bin
            where = "the GLB binary chunk"
        elif b.uri.startswith("data:"):
            data = _data_uri(b.uri, self.src, f"buffer {i}")
            where = "its data: URI"
        else:
            p = _uri_path(b.uri, self.base, self.src)
            assert p is not None
            real = os.fspath(self.files.resolve(p, "glTF buffer", self.src))
            data = self._files_read.get(real)
            if data is None:
                data = self.files.read(p, GLTF_BUFFER_BYTES_MAX, "glTF buffer", self.src)
                self._buffer_bytes += len(data)
                if self._buffer_bytes > GLTF_BUFFERS_BYTES_MAX:
                    limit = GLTF_BUFFERS_BYTES_MAX
                    raise SceneError(self.src, f"the buffers add up to more than {limit} bytes")
                self._files_read[real] = data
            where = f"'{b.uri}'"
        if len(data) < b.byteLength:
            raise SceneError(
                self.src,
                f"buffer {i} should be {b.byteLength} bytes but {where} has {len(data)} (truncated?)",
            )
        self._buffers[i] = data
        return data

    def _view(self, view_i: int, what: str) -> tuple[bytes, int, int, int | None]:
        """(buffer bytes, start, length, stride) of a bufferView, its range checked."""
        bv = _get(self.doc.bufferViews, view_i, "bufferView", self.src)
        buf = self._buffer(bv.buffer)
        if bv.byteOffset + bv.byteLength > len(buf):
            raise SceneError(
                self.src,
                f"{what}: bufferView {view_i} (bytes {bv.byteOffset}..{bv.byteOffset + bv.byteLength}) "
                f"is out of range of buffer {bv.buffer} ({len(buf)} bytes)",
            )
        return buf, bv.byteOffset, bv.byteLength, bv.byteStride

    def _read(self, view_i: int, offset: int, count: int, dtype: str, ncomp: int, what: str) -> np.ndarray:
        buf, start, length, stride = self._view(view_i, what)
        item = np.dtype(dtype).itemsize
        elem = item * ncomp
        stride = stride or elem
        if stride < elem:
            raise SceneError(
                self.src, f"{what}: byteStride {stride} is smaller than an element ({elem} bytes)"
            )
        need = offset + stride * (count - 1) + elem
        if need > length:
            raise SceneError(
                self.src,
                f"{what}: accessor reads {need} bytes, past the end of bufferView {view_i} ({length} bytes)",
            )
        arr = np.ndarray(
            (count, ncomp), dtype=dtype, buffer=buf, offset=start + offset, strides=(stride, item)
        )
        return arr.copy()

    def _accessor(self, i: int, what: str, types: tuple[str, ...], comps: tuple[int, ...] | None = None):
        """Elements of accessor i as (count, ncomp): float64, or the raw integers when `comps`
        (allowed component types, for indices) is given."""
        a = _get(self.doc.accessors, i, "accessor", self.src)
        what = f"{what} (accessor {i})"
        if a.type not in types:
            raise SceneError(self.src, f"{what}: type {a.type} where {' or '.join(types)} is expected")
        dtype = _COMPONENTS.get(a.componentType)
        if dtype is None or (comps is not None and a.componentType not in comps):
            raise SceneError(self.src, f"{what}: component type {a.componentType} is not allowed here")
        if a.count > ACCESSOR_COUNT_MAX:
            raise SceneError(self.src, f"{what}: {a.count} elements; the limit is {ACCESSOR_COUNT_MAX}")
        ncomp = _NCOMP[a.type]
        if a.bufferView is not None:
            arr = self._read(a.bufferView, a.byteOffset, a.count, dtype, ncomp, what)
        else:
            if a.count > ZERO_ACCESSOR_ELEMENTS_MAX:
                raise SceneError(
                    self.src,
                    f"{what}: {a.count} elements with no bufferView; "
                    f"the limit is {ZERO_ACCESSOR_ELEMENTS_MAX}",
                )
            arr = np.zeros((a.count, ncomp), dtype)
        if a.sparse is not None:
            sp = a.sparse
            if sp.count > a.count:
                raise SceneError(self.src, f"{what}: {sp.count} sparse elements in an accessor of {a.count}")
            idt = _COMPONENTS.get(sp.indices.componentType)
            if sp.indices.componentType not in (5121, 5123, 5125) or idt is None:
                raise SceneError(self.src, f"{what}: sparse index component type {sp.indices.componentType}")
            ix, vx = sp.indices, sp.values
            where = self._read(ix.bufferView, ix.byteOffset, sp.count, idt, 1, what).reshape(-1)
            if where.max() >= a.count:
                raise SceneError(
                    self.src, f"{what}: sparse index {int(where.max())} is out of range ({a.count})"
                )
            arr[where.astype(np.int64)] = self._read(
                vx.bufferView, vx.byteOffset, sp.count, dtype, ncomp, what
            )
        if a.normalized and a.componentType in _NORM_DIV:
            return np.maximum(arr.astype(np.float64) / _NORM_DIV[a.componentType], -1.0)
        return arr if comps is not None else arr.astype(np.float64)

    # --- materials and images

    def _material(self, i: int | None) -> tuple[MaterialDesc, int, np.ndarray | None]:
        """(material, TEXCOORD set of its base colour texture, 3x3 UV transform or None), cached."""
        got = self._materials.get(i)
        if got is not None:
            return got
        if i is None:
            m = _Material(name="default")
            self.note("primitives without a material (the glTF default: white, metallic 1, roughness 1)")
        else:
            m = _get(self.doc.materials, i, "material", self.src)
        name = m.name or f"material{i}"
        pbr = m.pbrMetallicRoughness or _Pbr()
        metallic, roughness = pbr.metallicFactor, pbr.roughnessFactor
        if pbr.metallicRoughnessTexture is not None:
            mr = self._image_of(pbr.metallicRoughnessTexture, f"material '{name}' metallicRoughnessTexture")
            px = mr.pixels.reshape(-1, 3)
            scale = 255.0 if px.dtype == np.uint8 else 1.0
            roughness *= float(px[:, 1].mean()) / scale  # linear data: G roughness, B metalness
            metallic *= float(px[:, 2].mean()) / scale
            self.note("metallicRoughnessTexture (reduced to its mean)")
        tex, uv_set, xform = None, 0, None
        if pbr.baseColorTexture is not None:
            info = pbr.baseColorTexture
            tex = self._image_of(info, f"material '{name}' baseColorTexture")
            uv_set = info.texCoord
            tt = info.extensions.get("KHR_texture_transform")
            if tt is not None:
                xform, uv_set = _texture_transform(tt, uv_set, self.src, name)
            texture = _get(self.doc.textures, info.index, "texture", self.src)
            if texture.sampler is not None:
                s = _get(self.doc.samplers, texture.sampler, "sampler", self.src)
                if s.wrapS != _WRAP_REPEAT or s.wrapT != _WRAP_REPEAT:
                    self.note("clamped or mirrored texture wrap modes (textures repeat)")
        emission = np.array(m.emissiveFactor, np.float64)
        strength = m.extensions.get("KHR_materials_emissive_strength", {})
        try:
            emission *= float(strength.get("emissiveStrength", 1.0))
        except (AttributeError, TypeError, ValueError):
            raise SceneError(
                self.src, f"material '{name}': malformed KHR_materials_emissive_strength"
            ) from None
        if m.emissiveTexture is not None and emission.max() > 0:
            et = self._image_of(m.emissiveTexture, f"material '{name}' emissiveTexture")
            emission *= srgb_to_linear(et.pixels).reshape(-1, 3).mean(axis=0)
            self.note("emissiveTexture (reduced to its mean colour)")
        for what, t in (("normalTexture", m.normalTexture), ("occlusionTexture", m.occlusionTexture)):
            if t is not None:
                self.note(f"{what} (ignored)")
        if m.alphaMode != "OPAQUE":
            self.note(f"alphaMode {m.alphaMode} (drawn opaque)")
        for ext in m.extensions:
            if ext not in SILENT_EXTENSIONS:
                self.note(f"material extension {ext} (ignored)")
        mat = MaterialDesc(
            name=name,
            kind="conductor" if metallic >= 0.5 else "diffuse",
            base_color=(
                float(pbr.baseColorFactor[0]),
                float(pbr.baseColorFactor[1]),
                float(pbr.baseColorFactor[2]),
            ),
            base_color_texture=tex,
            roughness=float(min(max(roughness, 0.0), 1.0)),
            emission=(float(emission[0]), float(emission[1]), float(emission[2])),
            two_sided=m.doubleSided,  # glTF's default: one-sided, the back side black
        )
        self._materials[i] = got = (mat, uv_set, xform)
        return got

    def _image_of(self, info: _TextureInfo, what: str) -> TextureImage:
        texture = _get(self.doc.textures, info.index, "texture", self.src)
        if texture.source is None:
            exts = ", ".join(texture.extensions) or "none"
            raise SceneError(
                self.src, f"{what}: texture {info.index} has no PNG/JPEG source (extensions: {exts})"
            )
        i = texture.source
        got = self._images.get(i)
        if got is not None:
            return got
        img = _get(self.doc.images, i, "image", self.src)
        label = img.name or img.uri or f"image{i}"
        if img.uri is not None and not img.uri.startswith("data:"):
            p = _uri_path(img.uri, self.base, self.src)
            assert p is not None
            tex = self.textures.load(p)
        else:
            if img.uri is not None:
                data = _data_uri(img.uri, self.src, f"image {i}")
            elif img.bufferView is not None:
                buf, start, length, _ = self._view(img.bufferView, f"image {i}")
                data = buf[start : start + length]
            else:
                raise SceneError(self.src, f"image {i} has neither a uri nor a bufferView")
            tex = decode_image_bytes(data, f"{self.path.name}:{label}", self.src)
            self.textures.add_pixels(tex, self.src)
        self._images[i] = tex
        return tex


def _texture_transform(tt: Any, uv_set: int, src: str, name: str) -> tuple[np.ndarray, int]:
    """KHR_texture_transform as a 3x3 matrix on (u, v, 1), and the UV set it selects."""
    try:
        ox, oy = (float(v) for v in tt.get("offset", (0.0, 0.0)))
        sx, sy = (float(v) for v in tt.get("scale", (1.0, 1.0)))
        r = float(tt.get("rotation", 0.0))
        uv_set = int(tt.get("texCoord", uv_set))
    except (AttributeError, TypeError, ValueError):
        raise SceneError(src, f"material '{name}': malformed KHR_texture_transform {tt!r}") from None
    c, s = math.cos(r), math.sin(r)
    t = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1.0]])
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])
    return t @ rot @ np.diag([sx, sy, 1.0]), uv_set


def _data_uri(uri: str, src: str, what: str) -> bytes:
    head, sep, payload = uri.partition(",")
    if not sep or not head.endswith(";base64"):
        raise SceneError(src, f"{what}: only base64 data: URIs are supported")
    if len(payload) > GLTF_BUFFER_BYTES_MAX * 4 // 3 + 4:
        raise SceneError(src, f"{what}: data: URI is larger than {GLTF_BUFFER_BYTES_MAX} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise SceneError(src, f"{what}: data: URI is not valid base64") from None

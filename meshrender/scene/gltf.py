"""glTF 2.0 (`.gltf` with external or `data:` buffers, and binary `.glb`) to `MeshData`.

How: the JSON (or a GLB's JSON chunk) is decoded by msgspec straight into the Structs below,
so a wrong type anywhere is reported with its path (`$.accessors[3].count`). The default scene's
node tree is walked with world matrices (TRS or column-major `matrix`); every node with a mesh
gives one `MeshData` in world space (two when only some of its primitives have normals): normals
by the inverse transpose, winding flipped under a mirroring transform. Accessors are read with
numpy views over the buffer (any component type, normalized integers, byteStride, sparse
substitution), each range checked against its bufferView and buffer first.

Materials are the `gltf` kind (kernels/bsdf.py: the spec's metallic-roughness BRDF): base colour
factor x baseColorTexture (sRGB), metallic and roughness factors x metallicRoughnessTexture (B, G;
linear) per texel in the kernel, normalTexture with its `scale` (tangents from TANGENT, else made
by `tangent_frames`, a MikkTSpace-style generator), emissiveFactor x KHR_materials_emissive_strength
x emissiveTexture (sRGB), alphaMode MASK (alphaCutoff) and BLEND (stochastic pass-through) with the
base colour's alpha (factor x the image's alpha channel), KHR_materials_transmission (factor >= 0.5)
+ KHR_materials_ior as a dielectric: thin-walled as the extension says, unless KHR_materials_volume
gives it a thickness; KHR_materials_ior alone sets the dielectric lobe's F0. Each slot keeps its
sampler's wrap modes (repeat, clamp to edge, mirrored repeat) and its KHR_texture_transform; all
filtering is bilinear. A primitive has one UV set (the base colour's texCoord, else the first
slot's); slots asking for another are warned. `doubleSided` (default false) is `two_sided`.

Anything that would render wrongly is a SceneError naming the file and the feature: required
extensions we lack (Draco, meshopt, BasisU, ...), point/line modes, URIs with a scheme other
than `data:` (remote or `file:`). Files are read through `SceneFiles`: a buffer or image URI
that leads outside the scene's folder tree (absolute, `../`, a symlink) is refused. Budgets
checked before allocating: the JSON's size and container count, each buffer's and all buffers'
bytes, accessor counts (x stride within their bufferView), node depth and cycles. What can be
rendered without (occlusion maps, skins, morph targets, cameras, animations, punctual lights,
other material extensions, extensions only in extensionsUsed) is listed in `warnings`.

The reader is our own rather than pygltflib: it is a hundred lines on top of msgspec, which
validates every field we use with a precise path; pygltflib would be an extra dependency that
still leaves accessor decoding, range checks and GLB truncation checks to us.
"""

from __future__ import annotations

import base64
import binascii
import io
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
from .images import IMAGE_BYTES_MAX, TextureCache, decode_image_bytes
from .obj import TRIS_MAX
from .types import IDENTITY_UV, MaterialDesc, MeshData, TextureImage, TextureSampler

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
SUPPORTED_REQUIRED = {
    "KHR_materials_emissive_strength",
    "KHR_materials_ior",
    "KHR_materials_transmission",
    "KHR_materials_volume",
    "KHR_mesh_quantization",
    "KHR_texture_transform",
}
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
_WRAPS = {10497: "repeat", 33071: "clamp", 33648: "mirror"}  # REPEAT, CLAMP_TO_EDGE, MIRRORED_REPEAT
MATERIAL_EXTENSIONS = {  # material extensions applied (others are warned)
    "KHR_materials_emissive_strength",
    "KHR_materials_ior",
    "KHR_materials_transmission",
    "KHR_materials_volume",
}
TRANSMISSION_MIN = 0.5  # a transmissionFactor from here is glass (a dielectric); below, drawn opaque
IOR_MAX = 10.0  # KHR_materials_ior allows [1, inf); no real material passes 4 (diamond is 2.42)

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
    scale: float = 1.0  # normalTexture
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
    alphaCutoff: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5
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
    """Texture references whose images we read: base colour, metallic-roughness, normal, emissive."""
    out = []
    for m in doc.materials:
        pbr = m.pbrMetallicRoughness
        if pbr is not None:
            out += [t for t in (pbr.baseColorTexture, pbr.metallicRoughnessTexture) if t is not None]
        out += [t for t in (m.normalTexture, m.emissiveTexture) if t is not None]
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
        self._materials: dict[int | None, tuple[MaterialDesc, int]] = {}
        self._alphas: dict[int, TextureImage | None] = {}
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
            P, N, UV, IDX, MID, TAN = [], [], [], [], [], []
            off = 0
            for pos, nrm, uv, tris, mat, tan in prims:
                TAN.append(tan)
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
            tangents = None
            if any(t is not None for t in TAN):
                t = np.concatenate(
                    [t if t is not None else np.zeros((len(p), 4)) for t, p in zip(TAN, P, strict=True)]
                )
                xyz = t[:, :3] @ lin.T  # tangents follow the surface: the linear part itself
                length = np.linalg.norm(xyz, axis=1, keepdims=True)
                xyz = np.divide(xyz, length, out=np.zeros_like(xyz), where=length > 0)
                w = t[:, 3:] * (1.0 if det > 0 else -1.0)  # a mirror flips the bitangent's side
                tangents = np.concatenate([xyz, w], axis=1).astype(np.float32)
            out.append(
                MeshData(
                    name=name,
                    positions=pos.astype(np.float32),
                    indices=idx.astype(np.int32),
                    material_ids=np.concatenate(MID),
                    materials=mats,
                    normals=normals,
                    uvs=uvs,
                    tangents=tangents,
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
        mat, uv_set = self._material(prim.material)
        uv = None
        key = f"TEXCOORD_{uv_set}"
        if key in prim.attributes:
            uv = self._accessor(prim.attributes[key], f"{what} {key}", ("VEC2",))
            if len(uv) != nv:
                raise SceneError(self.src, f"{what}: {key} has {len(uv)} elements, POSITION has {nv}")
        elif mat.textures():
            self.note(f"textured material without {key} (texture sampled at uv 0,0)")
        if prim.indices is not None:
            idx = self._accessor(prim.indices, f"{what} indices", ("SCALAR",), (5121, 5123, 5125))
            idx = idx.reshape(-1).astype(np.int64)
            if len(idx) and (idx.max() >= nv):
                raise SceneError(self.src, f"{what}: index {int(idx.max())} is out of range ({nv} vertices)")
        else:
            idx = np.arange(nv, dtype=np.int64)
        tris = self._triangles(idx, prim.mode, what)
        tan = None
        if mat.normal_texture is not None:
            if nrm is None or uv is None:
                self.note("normalTexture on a primitive without NORMAL or TEXCOORD (not applied)")
            elif "TANGENT" in prim.attributes:
                tan = self._accessor(prim.attributes["TANGENT"], f"{what} TANGENT", ("VEC4",))
                if len(tan) != nv:
                    raise SceneError(self.src, f"{what}: TANGENT has {len(tan)} elements, POSITION has {nv}")
                if not np.isfinite(tan).all():
                    raise SceneError(self.src, f"{what}: TANGENT has values that are not finite")
                tan[:, 3] = np.where(tan[:, 3] < 0, -1.0, 1.0)
            else:
                tan = tangent_frames(pos, nrm, uv, tris)
        return pos, nrm, uv, tris, mat, tan

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

    def _material(self, i: int | None) -> tuple[MaterialDesc, int]:
        """(material, the TEXCOORD set its primitives' UVs come from), cached."""
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
        exts = m.extensions
        slots: dict[str, TextureImage] = {}
        samplers: dict[str, TextureSampler] = {}
        uv_sets: dict[str, int] = {}
        infos = (
            ("base_color", pbr.baseColorTexture, "baseColorTexture"),
            ("metallic_roughness", pbr.metallicRoughnessTexture, "metallicRoughnessTexture"),
            ("normal", m.normalTexture, "normalTexture"),
            ("emission", m.emissiveTexture, "emissiveTexture"),
        )
        for slot, info, what in infos:
            if info is None:
                continue
            slots[slot] = self._image_of(info, f"material '{name}' {what}")
            samplers[slot], uv_sets[slot] = self._sampler(info, name)
        uv_set = uv_sets.get("base_color", next(iter(uv_sets.values()), 0))
        for u in uv_sets.values():
            if u != uv_set:
                self.note(f"texture slots reading different TEXCOORD sets (all read TEXCOORD_{uv_set})")
        emission = np.array(m.emissiveFactor, np.float64)
        strength = _ext(exts, "KHR_materials_emissive_strength", self.src, name)
        emission *= _number(strength, "emissiveStrength", 1.0, self.src, name, lo=0.0)
        if emission.max() <= 0:
            slots.pop("emission", None)
        if not np.all(np.isfinite(emission)) or emission.min() < 0:
            problem = f"emission {tuple(emission)} is not a finite colour >= 0"
            raise SceneError(self.src, f"material '{name}': {problem}")
        if m.occlusionTexture is not None:
            self.note("occlusionTexture (ignored: a path tracer computes occlusion)")
        alpha_mode = {"OPAQUE": "opaque", "MASK": "mask", "BLEND": "blend"}.get(m.alphaMode)
        if alpha_mode is None:
            problem = f"alphaMode {m.alphaMode!r} is not OPAQUE, MASK or BLEND"
            raise SceneError(self.src, f"material '{name}': {problem}")
        alpha_tex = None
        if alpha_mode != "opaque" and pbr.baseColorTexture is not None:
            alpha_tex = self._alpha_of(pbr.baseColorTexture, f"material '{name}' baseColorTexture")
            if alpha_tex is not None:
                samplers["alpha"] = samplers["base_color"]
        for ext in exts:
            if ext not in MATERIAL_EXTENSIONS and ext not in SILENT_EXTENSIONS:
                self.note(f"material extension {ext} (ignored)")
        metallic = float(min(max(pbr.metallicFactor, 0.0), 1.0))
        roughness = float(min(max(pbr.roughnessFactor, 0.0), 1.0))
        ior = _number(_ext(exts, "KHR_materials_ior", self.src, name), "ior", 1.5, self.src, name, lo=1.0)
        if ior > IOR_MAX:
            raise SceneError(self.src, f"material '{name}': KHR_materials_ior {ior} is above {IOR_MAX}")
        tr = _ext(exts, "KHR_materials_transmission", self.src, name)
        transmission = _number(tr, "transmissionFactor", 0.0, self.src, name, lo=0.0)
        kind = "gltf"
        thin = False
        if transmission >= TRANSMISSION_MIN and metallic < 0.5:
            kind = "dielectric"
            volume = _ext(exts, "KHR_materials_volume", self.src, name)
            thin = _number(volume, "thicknessFactor", 0.0, self.src, name, lo=0.0) <= 0.0
            if "transmissionTexture" in tr:
                self.note("transmissionTexture (the factor is used)")
            if "metallic_roughness" in slots:
                self.note("metallicRoughnessTexture on a transmissive material (the factors are used)")
                slots.pop("metallic_roughness")
            if thin and roughness > 0:
                self.note("rough thin-walled transmission (drawn as a smooth pane)")
            if volume and ("attenuationDistance" in volume or "attenuationColor" in volume):
                self.note("KHR_materials_volume attenuation (ignored)")
        elif transmission > 0:
            self.note(f"transmissionFactor below {TRANSMISSION_MIN} (drawn opaque)")
        if kind == "dielectric" and ior == 1.0:
            ior = 1.0 + 1e-4  # an index of 1 is no interface at all; keep Fresnel defined
        mat = MaterialDesc(
            name=name,
            kind=kind,
            base_color=(
                float(pbr.baseColorFactor[0]),
                float(pbr.baseColorFactor[1]),
                float(pbr.baseColorFactor[2]),
            ),
            base_color_texture=slots.get("base_color"),
            roughness=roughness,
            emission=(float(emission[0]), float(emission[1]), float(emission[2])),
            two_sided=m.doubleSided,  # glTF's default: one-sided, the back side black
            ior=float(ior),
            thin=thin,
            metallic=metallic,
            metallic_roughness_texture=slots.get("metallic_roughness"),
            normal_texture=slots.get("normal"),
            normal_scale=float(m.normalTexture.scale) if m.normalTexture is not None else 1.0,
            emission_texture=slots.get("emission"),
            alpha_mode=alpha_mode,
            alpha_cutoff=float(m.alphaCutoff),
            alpha=float(min(max(pbr.baseColorFactor[3], 0.0), 1.0)),
            alpha_texture=alpha_tex,
            samplers={k: v for k, v in samplers.items() if k in slots or k == "alpha"},
        )
        self._materials[i] = got = (mat, uv_set)
        return got

    def _sampler(self, info: _TextureInfo, name: str) -> tuple[TextureSampler, int]:
        """The slot's wrap modes and UV transform, and the TEXCOORD set it reads."""
        texture = _get(self.doc.textures, info.index, "texture", self.src)
        wrap_s = wrap_t = "repeat"
        if texture.sampler is not None:
            smp = _get(self.doc.samplers, texture.sampler, "sampler", self.src)
            for what, v in (("wrapS", smp.wrapS), ("wrapT", smp.wrapT)):
                if v not in _WRAPS:
                    problem = f"{what} {v} is not a glTF wrap mode"
                    raise SceneError(self.src, f"sampler {texture.sampler}: {problem}")
            wrap_s, wrap_t = _WRAPS[smp.wrapS], _WRAPS[smp.wrapT]
        uv_set, xform = info.texCoord, IDENTITY_UV
        tt = info.extensions.get("KHR_texture_transform")
        if tt is not None:
            m3, uv_set = _texture_transform(tt, uv_set, self.src, name)
            xform = tuple(float(x) for x in m3[:2].ravel())
        return TextureSampler(wrap_s, wrap_t, xform), uv_set

    def _alpha_of(self, info: _TextureInfo, what: str) -> TextureImage | None:
        """The base colour image's alpha channel as a linear (H, W, 3) image, or None if it has none."""
        texture = _get(self.doc.textures, info.index, "texture", self.src)
        i = texture.source
        assert i is not None  # _image_of refused a texture without a source
        if i in self._alphas:
            return self._alphas[i]
        rgb = self._image_of(info, what)  # decoded and checked against the budgets already
        img = _get(self.doc.images, i, "image", self.src)
        if img.uri is not None and not img.uri.startswith("data:"):
            p = _uri_path(img.uri, self.base, self.src)
            assert p is not None
            data = self.files.read(p, IMAGE_BYTES_MAX, "image file", self.src)
        elif img.uri is not None:
            data = _data_uri(img.uri, self.src, f"image {i}")
        else:
            buf, start, length, _ = self._view(img.bufferView, f"image {i}")  # type: ignore[arg-type]
            data = buf[start : start + length]
        alpha = _alpha_channel(data)
        out = None
        if alpha is not None and alpha.shape == rgb.pixels.shape[:2] and alpha.min() < 255:
            out = TextureImage(f"{rgb.name}#alpha", np.ascontiguousarray(np.repeat(alpha[..., None], 3, 2)))
            self.textures.add_pixels(out, self.src)
        self._alphas[i] = out
        return out

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


def _ext(exts: dict[str, Any], name: str, src: str, mat: str) -> dict[str, Any]:
    """A material extension's object ({} when absent)."""
    got = exts.get(name, {})
    if not isinstance(got, dict):
        raise SceneError(src, f"material '{mat}': {name} is not a JSON object")
    return got


def _number(obj: dict[str, Any], key: str, default: float, src: str, mat: str, lo: float) -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < lo:
        raise SceneError(src, f"material '{mat}': {key} {v!r} is not a number >= {lo}")
    return float(v)


def _alpha_channel(data: bytes) -> np.ndarray | None:
    """The alpha channel of PNG/JPEG bytes already decoded once (so within every budget), or None."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as im:
        if im.mode not in ("RGBA", "LA", "PA") and not (im.mode == "P" and "transparency" in im.info):
            return None
        return np.asarray(im.convert("RGBA"), np.uint8)[..., 3].copy()


def tangent_frames(pos: np.ndarray, nrm: np.ndarray, uv: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Per-vertex tangents (xyz, handedness w) for a normal map, following MikkTSpace's scheme:
    each triangle's tangent dP/du (from its UV derivatives) is projected into every corner's
    normal plane and summed with the corner's angle as weight; the bitangent's side w says
    whether cross(N, T) points up the image (-dP/dv, glTF's v runs down). Unlike MikkTSpace it
    does not split a vertex whose triangles disagree on w (a mirrored UV seam that shares
    vertices): the sum decides. Degenerate UVs give any tangent perpendicular to the normal."""
    with np.errstate(all="ignore"):  # a file's NaN or huge values: caught by the finiteness check below
        out = _tangent_frames(pos, nrm, uv, tris)
    bad = ~np.isfinite(out).all(axis=1)
    out[bad] = (0.0, 0.0, 0.0, 1.0)  # no tangent: the kernel leaves such vertices' normals alone
    return out


def _tangent_frames(pos: np.ndarray, nrm: np.ndarray, uv: np.ndarray, tris: np.ndarray) -> np.ndarray:
    p = pos[tris].astype(np.float64)  # (T, 3 corners, 3)
    t = uv[tris].astype(np.float64)
    n = nrm.astype(np.float64)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    ok = np.abs(det) > 1e-20
    inv = np.divide(1.0, det, out=np.zeros_like(det), where=ok)[:, None]
    dpdu = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * inv
    dpdv = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * inv
    tan = np.zeros((len(pos), 3))
    side = np.zeros(len(pos))
    for c in range(3):
        a = p[:, (c + 1) % 3] - p[:, c]
        b = p[:, (c + 2) % 3] - p[:, c]
        la, lb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos = np.einsum("ij,ij->i", a, b) / np.maximum(la * lb, 1e-300)
        angle = np.arccos(np.clip(cos, -1.0, 1.0)) * ok
        v = tris[:, c]
        nv = n[v]
        tp = dpdu - nv * np.einsum("ij,ij->i", nv, dpdu)[:, None]
        length = np.linalg.norm(tp, axis=1, keepdims=True)
        tp = np.divide(tp, length, out=np.zeros_like(tp), where=length > 0)
        np.add.at(tan, v, tp * angle[:, None])
        up = -dpdv  # glTF's image "up": v decreasing
        w = np.sign(np.einsum("ij,ij->i", np.cross(nv, tp), up))
        np.add.at(side, v, w * angle)
    tan -= n * np.einsum("ij,ij->i", n, tan)[:, None]
    length = np.linalg.norm(tan, axis=1, keepdims=True)
    bad = (length[:, 0] < 1e-12)
    # any perpendicular for vertices with no usable UVs
    helper = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    alt = np.cross(n, helper)
    alt_len = np.linalg.norm(alt, axis=1, keepdims=True)
    alt = np.divide(alt, alt_len, out=np.zeros_like(alt), where=alt_len > 0)
    tan = np.where(bad[:, None], alt, np.divide(tan, length, out=np.zeros_like(tan), where=length > 0))
    w = np.where(side < 0, -1.0, 1.0)
    return np.concatenate([tan, w[:, None]], axis=1)

"""Cutting a compiled scene into content-addressed chunks, and putting it back together.

How it works
  * Every array of the compiled scene is a run of bytes. Arrays are cut into *segments* along
    boundaries a human can name: per mesh for per-vertex arrays, per texture for texels and
    texture headers, one segment for everything else (a scene of more than MESH_SEGMENTS_SOLO_MAX
    meshes groups neighbouring small meshes into segments of at least CDC_MIN_BYTES: 100,000
    tiny meshes would otherwise be 100,000 tiny chunks, each a file in every store, and a
    manifest past the chunk size limit). Each segment is cut into chunks by
    content-defined chunking (FastCDC: 128 KiB min, 512 KiB average, 2 MiB max), so an edit
    inside one segment changes only the chunks around it, and never those of other segments.
  * The camera, the material table and the render settings are chunks of their own (they are
    what edits touch most), as is every texture's header.
  * A chunk's name is the BLAKE3 hash of its bytes. The manifest lists, per array, its dtype,
    shape and segments with their chunks (hash, size). The manifest's own hash is the scene id.
  * Human names (files, meshes, textures) are *not* in the manifest: they travel beside it as
    metadata, so renaming or moving files changes neither the id nor a single chunk. Missing
    chunks are reported with those names when they are known, else with the structural label.
  * A manifest from elsewhere is checked before anything is allocated: bounded counts and sizes,
    known arrays with the right dtypes, and segment sizes that add up to each array's bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta
from pyfastcdc import FastCDC

from ..compiled import ARRAY_SPECS, FORMAT_VERSION, OPTIONAL_ARRAYS, CompiledScene
from ..errors import MeshrenderError
from ..settings import RenderSettings
from .hashing import chunk_hash

MANIFEST_VERSION = 1
CDC_MIN_BYTES = 128 << 10  # below this, chunk overhead (index row, request) outweighs dedup gains
CDC_AVG_BYTES = 512 << 10  # a few hundred KiB: fine-grained deltas, few enough chunks to track
CDC_MAX_BYTES = 2 << 20  # bounds one chunk's memory and transfer time
CHUNK_REF_BYTES_MAX = 16 << 20  # a whole small part (material table) may exceed the CDC max
MESH_SEGMENTS_SOLO_MAX = 4096  # meshes that each get their own segments; past this, neighbours share
SEGMENTS_MAX = 1 << 17  # meshes or textures in one scene: above the scene file's ENTRIES_MAX (100,000)
CHUNKS_MAX = 1 << 20  # 1M chunks x 512 KiB = 512 GiB: far past any scene
SCENE_BYTES_MAX = 1 << 38  # 256 GiB of arrays: refuse a manifest claiming more
MANIFEST_BYTES_MAX = 64 << 20  # what a manifest of CHUNKS_MAX entries could take, roughly
DIM_MAX = 1 << 34
LABEL_CHARS_MAX = 64

# arrays cut per mesh (by vertex range) and per texture (by texel range / header row)
PER_VERTEX = ("positions", "normals", "uvs")
SINGLE_CHUNK = ("camera", "materials", "mesh_vertex_ranges", "env_params", "env_info")

_cdc = FastCDC(min_size=CDC_MIN_BYTES, avg_size=CDC_AVG_BYTES, max_size=CDC_MAX_BYTES)

Hash = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class ChunkRef(msgspec.Struct, frozen=True, array_like=True):
    hash: Hash
    size: Annotated[int, Meta(ge=0, le=CHUNK_REF_BYTES_MAX)]


class Segment(msgspec.Struct, frozen=True, array_like=True):
    label: Annotated[str, Meta(max_length=LABEL_CHARS_MAX)]  # structural: "all", "mesh 3", "texture 0"
    chunks: Annotated[list[ChunkRef], Meta(max_length=CHUNKS_MAX)]


class ArrayPart(msgspec.Struct, frozen=True, kw_only=True):
    name: Annotated[str, Meta(max_length=LABEL_CHARS_MAX)]
    dtype: Annotated[str, Meta(max_length=16)]
    shape: Annotated[list[Annotated[int, Meta(ge=0, le=DIM_MAX)]], Meta(max_length=4)]
    segments: Annotated[list[Segment], Meta(max_length=SEGMENTS_MAX)]


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    format_version: int  # the compiled-scene format the arrays follow
    settings: ChunkRef  # msgpack-encoded RenderSettings (the scene's defaults)
    arrays: Annotated[list[ArrayPart], Meta(max_length=len(ARRAY_SPECS) + len(OPTIONAL_ARRAYS))]

    def chunk_refs(self) -> list[ChunkRef]:
        """Every chunk the scene needs (the manifest itself excluded), in manifest order."""
        refs = [self.settings]
        for a in self.arrays:
            for seg in a.segments:
                refs.extend(seg.chunks)
        return refs

    def unique_chunks(self) -> list[ChunkRef]:
        """Each distinct chunk once, in order of first reference: the order peers' chunk maps use."""
        return list({r.hash: r for r in self.chunk_refs()}.values())


class ManifestError(MeshrenderError):
    """A manifest that is malformed, from a newer format, or claims absurd sizes."""


class MissingChunksError(MeshrenderError):
    def __init__(self, scene_id: str, missing: list[str]):
        self.scene_id = scene_id
        self.missing = missing
        listing = "\n".join(f"  - {m}" for m in missing)
        super().__init__(f"scene {scene_id[:16]}: {len(missing)} chunk(s) missing:\n{listing}")


@dataclass
class ChunkedScene:
    scene_id: str
    manifest: Manifest
    manifest_bytes: bytes
    chunks: dict[str, bytes]  # every chunk by hash, the manifest included
    meta: dict = field(default_factory=dict)  # human names, not content

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self.chunks.values())


def scene_meta(scene: CompiledScene) -> dict:
    return {
        "source": scene.source,
        "mesh_names": scene.mesh_names,
        "material_names": scene.material_names,
        "texture_names": scene.texture_names,
    }


def _cut(buf: memoryview, chunks: dict[str, bytes], single: bool = False) -> list[ChunkRef]:
    if len(buf) == 0:
        return []
    pieces = [buf] if single else [buf[c.offset : c.offset + c.length] for c in _cdc.cut_buf(buf)]
    refs = []
    for piece in pieces:
        data = bytes(piece)
        h = chunk_hash(data)
        chunks[h] = data
        refs.append(ChunkRef(h, len(data)))
    return refs


def _segments(name: str, arr: np.ndarray, scene: CompiledScene) -> list[tuple[str, int, int]]:
    """(label, first byte, byte count) for each segment of an array."""
    row = arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
    if name in PER_VERTEX:
        ranges = scene.arrays["mesh_vertex_ranges"]
        if len(ranges) <= MESH_SEGMENTS_SOLO_MAX:
            return [(f"mesh {k}", int(f) * row, int(n) * row) for k, (f, n) in enumerate(ranges)]
        out, k0, start, size = [], 0, 0, 0  # meshes lie one after another: group neighbours
        for k, (f, n) in enumerate(ranges):
            if size == 0:
                k0, start = k, int(f) * row
            size += int(n) * row
            if size >= CDC_MIN_BYTES or k == len(ranges) - 1:
                out.append((f"mesh {k0}" if k == k0 else f"meshes {k0}-{k}", start, size))
                size = 0
        return out
    if name == "tex_texels":
        info = scene.arrays["tex_info"]
        return [(f"texture {k}", int(f) * row, int(w) * int(h) * row) for k, (f, w, h) in enumerate(info)]
    if name == "tex_info":
        return [(f"texture {k}", k * row, row) for k in range(arr.shape[0])]
    return [("all", 0, arr.nbytes)]


def chunk_scene(scene: CompiledScene) -> ChunkedScene:
    """Cut a compiled scene into chunks and build its manifest; the id is the manifest's hash."""
    chunks: dict[str, bytes] = {}
    parts = []
    # fixed order: the manifest never depends on dict order (an animated scene's arrays come last)
    for name in [*ARRAY_SPECS, *(n for n in OPTIONAL_ARRAYS if n in scene.arrays)]:
        arr = np.ascontiguousarray(scene.arrays[name])
        buf = memoryview(arr.tobytes())
        segments = []
        for label, start, size in _segments(name, arr, scene):
            single = name in SINGLE_CHUNK or name == "tex_info"
            segments.append(Segment(label, _cut(buf[start : start + size], chunks, single)))
        parts.append(ArrayPart(name=name, dtype=arr.dtype.str, shape=list(arr.shape), segments=segments))
    settings = _cut(memoryview(msgspec.msgpack.encode(scene.settings)), chunks, single=True)[0]
    manifest = Manifest(
        version=MANIFEST_VERSION, format_version=FORMAT_VERSION, settings=settings, arrays=parts
    )
    manifest_bytes = msgspec.msgpack.encode(manifest)
    scene_id = chunk_hash(manifest_bytes)
    chunks[scene_id] = manifest_bytes
    return ChunkedScene(scene_id, manifest, manifest_bytes, chunks, scene_meta(scene))


def decode_manifest(data: bytes, scene_id: str | None = None) -> Manifest:
    """Decode and check a manifest before anything it describes is allocated."""
    if len(data) > MANIFEST_BYTES_MAX:
        raise ManifestError(f"manifest of {len(data)} bytes exceeds {MANIFEST_BYTES_MAX}")
    if scene_id is not None and chunk_hash(data) != scene_id:
        raise ManifestError(f"manifest bytes do not hash to scene id {scene_id[:16]}")
    try:
        m = msgspec.msgpack.decode(data, type=Manifest)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ManifestError(f"malformed manifest: {exc}") from None
    if m.version != MANIFEST_VERSION:
        raise ManifestError(f"manifest version {m.version}; this build reads {MANIFEST_VERSION}")
    if m.format_version != FORMAT_VERSION:
        raise ManifestError(f"compiled-scene format {m.format_version}; this build reads {FORMAT_VERSION}")
    names = [a.name for a in m.arrays]
    required = set(ARRAY_SPECS)
    if len(set(names)) != len(names) or not required <= set(names) <= required | set(OPTIONAL_ARRAYS):
        wrong = sorted((required - set(names)) | (set(names) - required - set(OPTIONAL_ARRAYS)))
        raise ManifestError(f"manifest arrays {wrong or 'listed twice'}: missing or unknown, or repeated")
    total = chunks = 0
    for a in m.arrays:
        dtype, tail = ARRAY_SPECS.get(a.name) or OPTIONAL_ARRAYS[a.name]
        if a.dtype != np.dtype(dtype).str or len(a.shape) != 1 + len(tail) or tuple(a.shape[1:]) != tail:
            raise ManifestError(f"array {a.name}: {a.dtype}{a.shape} is not {dtype}(N, *{tail})")
        nbytes = int(np.prod(a.shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        seg_bytes = sum(c.size for s in a.segments for c in s.chunks)
        if nbytes != seg_bytes:
            raise ManifestError(f"array {a.name}: shape {a.shape} is {nbytes} bytes, its chunks {seg_bytes}")
        total += nbytes
        chunks += sum(len(s.chunks) for s in a.segments)
    if total > SCENE_BYTES_MAX or chunks > CHUNKS_MAX:
        raise ManifestError(f"manifest claims {total} bytes in {chunks} chunks, over the limits")
    return m


def _human(part: ArrayPart, seg: Segment, k: int, meta: dict) -> str:
    label = seg.label
    kind, _, idx = label.partition(" ")
    key = {"mesh": "mesh_names", "meshes": "mesh_names", "texture": "texture_names"}.get(kind, "")
    names = meta.get(key, [])
    first, _, last = idx.partition("-")
    if idx.isdigit() and int(idx) < len(names):
        label = f"{kind} {names[int(idx)]!r}"
    elif first.isdigit() and last.isdigit() and int(last) < len(names):
        label = f"{kind} {names[int(first)]!r} to {names[int(last)]!r}"
    where = "" if label == "all" else f" of {label}"
    return f"{part.name}{where} (chunk {k + 1} of {len(seg.chunks)})"


def assemble(
    scene_id: str,
    manifest_bytes: bytes,
    get: Callable[[str], bytes],
    missing: Callable[[list[str]], list[str]],
    meta: dict | None = None,
) -> CompiledScene:
    """Rebuild the compiled scene from its chunks. All missing chunks are reported at once, by
    human name where `meta` has one. `get` must verify hashes (the store does)."""
    meta = meta or {}
    m = decode_manifest(manifest_bytes, scene_id)
    absent = set(missing([r.hash for r in m.chunk_refs()]))
    if absent:
        lost = ["render settings"] if m.settings.hash in absent else []
        for a in m.arrays:
            for seg in a.segments:
                lost += [_human(a, seg, k, meta) for k, c in enumerate(seg.chunks) if c.hash in absent]
        raise MissingChunksError(scene_id, lost)

    def fetch(ref: ChunkRef) -> bytes:
        data = get(ref.hash)
        if len(data) != ref.size:
            raise ManifestError(f"chunk {ref.hash[:16]} has {len(data)} bytes, the manifest says {ref.size}")
        return data

    arrays = {}
    for a in m.arrays:
        buf = bytearray()
        for seg in a.segments:
            for ref in seg.chunks:
                buf += fetch(ref)
        dtype = (ARRAY_SPECS.get(a.name) or OPTIONAL_ARRAYS[a.name])[0]
        arrays[a.name] = np.frombuffer(bytes(buf), dtype=dtype).reshape(a.shape).copy()
    settings = msgspec.msgpack.decode(fetch(m.settings), type=RenderSettings)
    return CompiledScene(
        source=meta.get("source", f"scene:{scene_id}"),
        arrays=arrays,
        settings=settings,
        mesh_names=meta.get("mesh_names", []),
        material_names=meta.get("material_names", []),
        texture_names=meta.get("texture_names", []),
    )

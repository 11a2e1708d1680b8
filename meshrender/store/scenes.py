"""Scenes in the store: import a compiled scene as chunks, and assemble one back.

`import_scene` cuts the scene (`manifest.chunk_scene`), writes only chunks the store lacks,
and records the scene's membership and human names; it reports the total bytes and the bytes
that were new. Chunks go in batches bounded in bytes and in count (a scene of 100,000 tiny
meshes is 100,000 tiny chunks: one index transaction, and one batched flush to disk, per batch).
The human names are cut short, with a note, when they would not fit the store's meta limit:
they only label messages. `load_compiled` rebuilds the compiled scene, array for array, or raises one
error listing every missing chunk by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..compiled import CompiledScene
from .chunkstore import META_BYTES_MAX, PUT_MANY_CHUNKS_MAX, ChunkStore, MissingChunkError
from .manifest import ManifestError, MissingChunksError, assemble, chunk_scene

PUT_BATCH_BYTES = 64 << 20  # chunks written per index transaction: bounds memory held for one batch
PUT_BATCH_CHUNKS = min(PUT_MANY_CHUNKS_MAX, 8192)  # ... and their count: one transaction, one flush
NAMES_KEYS = ("mesh_names", "material_names", "texture_names")


@dataclass(frozen=True)
class ImportReport:
    scene_id: str
    total_bytes: int  # every chunk of the scene, the manifest included
    new_bytes: int  # what this import added to the store
    chunks: int
    new_chunks: int


def import_scene(store: ChunkStore, scene: CompiledScene) -> ImportReport:
    cut = chunk_scene(scene)
    new_bytes = new_chunks = 0
    batch: list[tuple[bytes, str]] = []
    size = 0

    def flush():
        nonlocal new_bytes, new_chunks, size
        if not batch:
            return
        for (_, fresh), (data, _) in zip(store.put_many(batch), batch, strict=True):
            if fresh:
                new_bytes += len(data)
                new_chunks += 1
        batch.clear()
        size = 0

    for h, data in cut.chunks.items():
        if store.has(h):
            continue
        batch.append((data, h))
        size += len(data)
        if size >= PUT_BATCH_BYTES or len(batch) >= PUT_BATCH_CHUNKS:
            flush()
    flush()
    meta = bounded_meta(cut.meta)
    store.add_scene(cut.scene_id, list(cut.chunks), total_bytes=cut.total_bytes, meta=meta)
    return ImportReport(cut.scene_id, cut.total_bytes, new_bytes, len(cut.chunks), new_chunks)


def bounded_meta(meta: dict) -> dict:
    """`meta` with its name lists cut short until it fits META_BYTES_MAX (noted in `names_cut`)."""

    def size(m: dict) -> int:
        return len(json.dumps(m, sort_keys=True, ensure_ascii=False).encode())

    if size(meta) <= META_BYTES_MAX:
        return meta
    out = dict(meta)
    out["source"] = str(out.get("source", ""))[:1024]
    out["names_cut"] = True
    keep = max((len(out.get(k) or []) for k in NAMES_KEYS), default=0)
    while keep > 0:
        keep //= 2
        for k in NAMES_KEYS:
            if k in meta:
                out[k] = [str(n)[:256] for n in (meta[k] or [])[:keep]]
        if size(out) <= META_BYTES_MAX:
            break
    return out


def load_compiled(store: ChunkStore, scene_id: str) -> CompiledScene:
    """The compiled scene `scene_id` from this store's chunks."""
    info = store.scene_info(scene_id) or {}
    meta = info.get("meta") or {}
    try:
        manifest_bytes = store.get(scene_id)
    except MissingChunkError:
        raise MissingChunksError(scene_id, [f"the manifest of scene {scene_id}"]) from None
    try:
        return assemble(scene_id, manifest_bytes, store.get, store.missing, meta)
    except MissingChunkError as exc:  # lost between the check and the read (evicted, quarantined)
        raise MissingChunksError(scene_id, [f"chunk {exc.hash}"]) from None


__all__ = ["ImportReport", "ManifestError", "MissingChunksError", "import_scene", "load_compiled"]

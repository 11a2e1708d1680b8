"""Scene ingest throughput against the raw speed of its parts, and the bytes each edit adds.

For the 1.1M-triangle bunny (the 69k bunny midpoint-subdivided twice, as shared/scenes/bunny_1m
describes) and the FlightHelmet, measured side by side in one run on the same bytes (the compiled
scene's arrays):
  raw        BLAKE3 over all bytes + zstd (the store's level) over all bytes: the limit
  ingest     content-defined chunking + BLAKE3 per chunk + zstd per chunk, in memory
  store      a full `import_scene` into a fresh on-disk store (atomic writes, fsync, SQLite)
and, for the FlightHelmet, the bytes new to the store after: moving the camera, changing one
material, and renaming every file. Run: python bench/store.py
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import blake3
import numpy as np
import zstandard

from meshrender.compiled import ARRAY_SPECS
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene
from meshrender.scene.types import LoadedScene
from meshrender.store.chunkstore import ZSTD_LEVEL, ChunkStore
from meshrender.store.manifest import chunk_scene
from meshrender.store.scenes import import_scene

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_files import scene_file  # noqa: E402  (the benchmark scenes beside the checkout)

BUNNY = "bunny/bunny.ply"
HELMET = "flight_helmet_gltf/glTF/FlightHelmet.gltf"
REPEATS = 3  # best of three: the machine is shared


def subdivide(positions: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint subdivision: every triangle into four, shared edge midpoints merged."""
    edges = np.concatenate([indices[:, [0, 1]], indices[:, [1, 2]], indices[:, [2, 0]]])
    edges.sort(axis=1)
    uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
    mids = (positions[uniq[:, 0]] + positions[uniq[:, 1]]) * 0.5
    m = inverse.reshape(3, -1).T + len(positions)
    a, b, c = indices.T
    ab, bc, ca = m.T
    faces = np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    return np.concatenate([positions, mids]).astype(np.float32), faces.astype(np.int32)


def bunny_1m() -> LoadedScene:
    loaded = load_scene(scene_file(BUNNY))
    mesh = loaded.meshes[0]
    p, f = mesh.positions, mesh.indices
    for _ in range(2):
        p, f = subdivide(p, f)
    mesh = dataclasses.replace(
        mesh, positions=p, indices=f, material_ids=np.zeros(len(f), np.int32), normals=None, uvs=None
    )
    return dataclasses.replace(loaded, meshes=[mesh])


def best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(label: str, loaded: LoadedScene) -> dict:
    scene = compile_scene(loaded)
    data = b"".join(np.ascontiguousarray(scene.arrays[n]).tobytes() for n in ARRAY_SPECS)
    mb = len(data) / 1e6
    zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    t_hash = best(lambda: blake3.blake3(data).digest())
    t_zstd = best(lambda: zc.compress(data))

    def ingest():
        cut = chunk_scene(scene)
        for chunk in cut.chunks.values():
            zc.compress(chunk)

    t_ingest = best(ingest)
    t_cut = best(lambda: chunk_scene(scene))
    tmp = Path(tempfile.mkdtemp(prefix="mr-bench-store-"))
    try:
        t = time.perf_counter()
        with ChunkStore(tmp / "store") as store:
            rep = import_scene(store, scene)
        t_store = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp)
    raw_mb_s = mb / (t_hash + t_zstd)
    return {
        "scene": label,
        "triangles": scene.triangle_count,
        "MB": round(mb, 1),
        "chunks": rep.chunks,
        "blake3_MB_s": round(mb / t_hash),
        "zstd_MB_s": round(mb / t_zstd),
        "raw_blake3_plus_zstd_MB_s": round(raw_mb_s),
        "chunk_and_hash_MB_s": round(mb / t_cut),
        "ingest_MB_s": round(mb / t_ingest),
        "ingest_vs_raw": round(mb / t_ingest / raw_mb_s, 2),
        "store_import_MB_s": round(mb / t_store),
        "store_import_vs_raw": round(mb / t_store / raw_mb_s, 2),
    }


def edits(loaded: LoadedScene) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="mr-bench-edits-"))
    try:
        with ChunkStore(tmp / "store") as store:
            base = import_scene(store, compile_scene(loaded))
            cam = dataclasses.replace(loaded.camera, position=(0.1, 0.4, 1.5))
            moved = import_scene(store, compile_scene(dataclasses.replace(loaded, camera=cam)))
            edited = dataclasses.replace(loaded, meshes=[dataclasses.replace(m) for m in loaded.meshes])
            target = edited.meshes[0].materials[0]
            new = dataclasses.replace(target, base_color=(0.2, 0.5, 0.9), roughness=0.7)
            for m in edited.meshes:
                m.materials = [new if x is target else x for x in m.materials]
            material = import_scene(store, compile_scene(edited))
            renamed = dataclasses.replace(
                loaded,
                source="elsewhere/renamed.gltf",
                meshes=[dataclasses.replace(m, name=f"renamed:{i}") for i, m in enumerate(loaded.meshes)],
            )
            rename = import_scene(store, compile_scene(renamed))
    finally:
        shutil.rmtree(tmp)
    total = base.total_bytes
    return {
        "scene_bytes": total,
        "camera_move_new_bytes": moved.new_bytes,
        "one_material_new_bytes": material.new_bytes,
        "one_material_fraction": round(material.new_bytes / total, 5),
        "rename_new_bytes": rename.new_bytes,
        "rename_same_id": rename.scene_id == base.scene_id,
    }


def main() -> None:
    scene_file(BUNNY)  # both there before anything is measured, or one message saying where to get them
    helmet = load_scene(scene_file(HELMET))
    for label, loaded in (("bunny_1m", bunny_1m()), ("FlightHelmet", helmet)):
        print(json.dumps(measure(label, loaded)))
    print(json.dumps({"edits_on": "FlightHelmet", **edits(helmet)}))


if __name__ == "__main__":
    main()

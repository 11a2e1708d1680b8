"""How long a scene of many tiny meshes takes to load, compile and import into a store.

The issue's case: a TOML with 100,000 `[[meshes]]` (the documented maximum, `ENTRIES_MAX`), each
placing the same one-triangle OBJ somewhere else, so every mesh is its own chunk. Prints the
seconds of each stage and how many fsync calls the import made (and syncfs calls, where the
store batches them), and the CPU seconds of each stage (the wall figures on a shared machine
include waiting for the cores; the import also waits for the disk: one file per chunk).

    .venv/bin/python bench/scene_load.py                 # 100,000 meshes
    .venv/bin/python bench/scene_load.py --meshes 10000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_scene(folder: Path, meshes: int) -> Path:
    (folder / "tri.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    lines = []
    for i in range(meshes):
        lines.append(
            f'[[meshes]]\nfile = "tri.obj"\ntranslate = [{i % 100}, {i // 100 % 100}, {i // 10000}]\n'
        )
    path = folder / "scene.toml"
    path.write_text("".join(lines))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meshes", type=int, default=100_000)
    ap.add_argument("--dir", help="where to write the scene and the store (default: a temp folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from meshrender.scene.compile import compile_scene
    from meshrender.scene.load import load_scene
    from meshrender.store import chunkstore
    from meshrender.store.chunkstore import ChunkStore
    from meshrender.store.scenes import import_scene

    calls = {"fsync": 0, "syncfs": 0}
    real_fsync = os.fsync

    def counting_fsync(fd):
        calls["fsync"] += 1
        return real_fsync(fd)

    os.fsync = counting_fsync
    real_syncfs = getattr(chunkstore, "_syncfs", None)
    if real_syncfs is not None:

        def counting_syncfs(path):
            calls["syncfs"] += 1
            return real_syncfs(path)

        chunkstore._syncfs = counting_syncfs

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        path = write_scene(tmp, args.meshes)
        t0, c0 = time.perf_counter(), time.process_time()
        scene = load_scene(path)
        t1, c1 = time.perf_counter(), time.process_time()
        compiled = compile_scene(scene)
        t2, c2 = time.perf_counter(), time.process_time()
        with ChunkStore(tmp / "store") as store:
            before = dict(calls)
            rep = import_scene(store, compiled)
            t3, c3 = time.perf_counter(), time.process_time()
        out = {
            "meshes": args.meshes,
            "toml_bytes": path.stat().st_size,
            "load_s": round(t1 - t0, 2),
            "compile_s": round(t2 - t1, 2),
            "import_s": round(t3 - t2, 2),
            "total_s": round(t3 - t0, 2),
            # CPU seconds of this process: what the wall times are when the machine is not shared
            "load_cpu_s": round(c1 - c0, 2),
            "compile_cpu_s": round(c2 - c1, 2),
            "import_cpu_s": round(c3 - c2, 2),
            "chunks": rep.chunks,
            "new_chunks": rep.new_chunks,
            "import_fsync_calls": calls["fsync"] - before["fsync"],
            "import_syncfs_calls": calls["syncfs"] - before["syncfs"],
        }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>20}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

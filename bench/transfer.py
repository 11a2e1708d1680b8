"""Scene transfer through a party on loopback: one pair against raw TCP, and the swarm's fan-out.

Measured side by side in one run, every peer a real `meshrender` process on 127.0.0.1:
  raw TCP    the scene's chunk bytes over one trio TCP connection, sender and receiver in two
             processes, 1 MiB writes and reads: the ceiling for one pair on this machine;
  one pair   `meshrender store fetch` of the scene from one peer holding it (seconds as the
             fetch reports them: from the first chunk-map query to the scene recorded whole);
  fan-out    the source alone holds the scene; 3 and then 7 fresh peers fetch it at once. The
             source's upload (wire bytes, from its own counters) over the scene's bytes says how
             many copies it sent: a server would send N, a swarm about one.
The scene is ~100 MB: the 1.1M-triangle bunny of bench/store.py plus a 277k-triangle one.
Run: python bench/transfer.py [--quick]  (--quick: 1 and 3 fetchers only)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store import SCENES, subdivide  # noqa: E402  (bench/store.py: the same subdivided bunny)

from meshrender.scene.compile import compile_scene  # noqa: E402
from meshrender.scene.load import load_scene  # noqa: E402
from meshrender.store.chunkstore import ChunkStore  # noqa: E402
from meshrender.store.manifest import decode_manifest  # noqa: E402
from meshrender.store.scenes import import_scene  # noqa: E402

PARTY, SECRET = "bench-party", "bench secret"
REPO = Path(__file__).resolve().parent.parent


def hundred_mb_scene():
    loaded = load_scene(SCENES / "bunny" / "bunny.ply")
    base = loaded.meshes[0]
    meshes = []
    for levels, shift in ((2, 0.0), (1, 0.25)):
        p, f = base.positions, base.indices
        for _ in range(levels):
            p, f = subdivide(p, f)
        p = p + np.float32(shift)
        meshes.append(
            dataclasses.replace(
                base, name=f"bunny{levels}", positions=p, indices=f,
                material_ids=np.zeros(len(f), np.int32), normals=None, uvs=None,
            )  # fmt: skip
        )
    return compile_scene(dataclasses.replace(loaded, meshes=meshes))


def meshrender(*args: str, home: Path, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "meshrender", *args, "--home", str(home)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, env=env, **kw)


def start_source(home: Path) -> tuple[subprocess.Popen, str]:
    proc = meshrender("peer", "--headless", "--json", "--party", PARTY, "--secret", SECRET, home=home)
    for line in proc.stdout:
        ev = json.loads(line)
        if ev["event"] == "listening":
            return proc, f"{ev['addrs'][0]}/p2p/{ev['peer_id']}"
    raise RuntimeError("the source peer did not start")


def stop_source(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    for line in out.splitlines():
        ev = json.loads(line)
        if ev["event"] == "stopped":
            return ev["transfers"]
    raise RuntimeError("the source peer did not report its transfers")


def fan_out(src_home: Path, scene_id: str, scene_bytes: int, n: int, tmp: Path) -> dict:
    source, addr = start_source(src_home)
    t0 = time.perf_counter()
    fetchers = [
        meshrender("store", "fetch", scene_id, "--party", PARTY, "--secret", SECRET, "--bootstrap", addr,
                   "--json", home=tmp / f"fetch{n}-{i}")  # fmt: skip
        for i in range(n)
    ]
    reports = []
    for f in fetchers:
        out, _ = f.communicate(timeout=1800)
        if f.returncode != 0:
            raise RuntimeError(f"a fetcher failed (exit {f.returncode})")
        reports.append(json.loads(out))
    wall = time.perf_counter() - t0
    sent = stop_source(source)
    from_source = sum(r["bytes_by_provider"].get(addr.rsplit("/", 1)[1], 0) for r in reports)
    return {
        "fetchers": n,
        "wall_s": round(wall, 1),
        "slowest_fetch_s": round(max(r["seconds"] for r in reports), 1),
        "fetch_MB_s_each": round(scene_bytes / 1e6 / (sum(r["seconds"] for r in reports) / n), 1),
        "source_upload_wire_bytes": sent["bytes_out"],
        "source_upload_chunk_bytes": from_source,
        "source_copies": round(from_source / scene_bytes, 2),
        "providers_per_fetcher": [len(r["bytes_by_provider"]) for r in reports],
    }


RECEIVER = """
import sys, time, trio
async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    stream = await listeners[0].accept()
    n, t = 0, None
    while chunk := await stream.receive_some(1 << 20):
        t = t or time.perf_counter()
        n += len(chunk)
    print(n, time.perf_counter() - t, flush=True)
trio.run(main)
"""


def raw_tcp(payload: bytes) -> float:
    """MB/s of trio TCP from this process into a receiver process, 1 MiB writes."""
    rx = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    port = int(rx.stdout.readline())

    async def send():
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        view = memoryview(payload)
        for i in range(0, len(view), 1 << 20):
            await stream.send_all(view[i : i + (1 << 20)])
        await stream.aclose()

    trio.run(send)
    n, seconds = rx.stdout.readline().split()
    rx.wait()
    return int(n) / 1e6 / float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 and 3 fetchers only")
    ap.add_argument("--fetchers", type=int, nargs="*", help="fan-outs to run (default 1 3 7)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mr-bench-transfer-"))
    scene = hundred_mb_scene()
    src_home = tmp / "source"
    with ChunkStore(src_home / "store") as store:
        rep = import_scene(store, scene)
        manifest = decode_manifest(store.get(rep.scene_id), rep.scene_id)
        payload = b"".join(store.get(r.hash) for r in manifest.unique_chunks())
    scene_bytes = rep.total_bytes
    print(f"scene {rep.scene_id[:16]}: {scene_bytes / 1e6:.1f} MB in {rep.chunks} chunks", flush=True)
    raw = raw_tcp(payload)
    print(f"raw trio TCP, one connection: {raw:.0f} MB/s", flush=True)
    results = []
    for n in args.fetchers or ((1, 3) if args.quick else (1, 3, 7)):
        r = fan_out(src_home, rep.scene_id, scene_bytes, n, tmp)
        if n == 1:
            r["pair_vs_raw_tcp"] = round(r["fetch_MB_s_each"] / raw, 3)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(json.dumps({"scene_MB": round(scene_bytes / 1e6, 1), "raw_tcp_MB_s": round(raw), "runs": results}))


if __name__ == "__main__":
    main()

"""Streaming: how fast an edit reaches the watcher, and what the stream costs, on a 3-peer party.

Two headless member peers (`meshrender peer`, 1 render thread each) and a streaming peer in this
process (its own render process, 1 thread) on loopback stream the built-in Cornell box. Printed:
  * edit -> first preview of the new version, at the watcher (a `Watch`, the same object the web
    page's WebSocket and the TUI read): camera moves and material changes, made mid-render;
  * previews per second while the camera orbits continuously (a move every ORBIT_STEP_S, as the
    web page throttles a drag), and how many of those frames show the newest version;
  * bytes per preview frame as PNG, JPEG and WebP (meshrender.imagestream, the web stream's
    encoder) and per second at the orbit's frame rate;
  * scene bytes moved per edit: the chunks the edit added to the store, and the bytes the
    streaming peer served to the members for it;
  * saving the scene file (`meshrender stream`'s watcher, on a copy of the Cornell box's folder)
    to the new version, and to its first preview.
Figures only: nothing here asserts a time.

    python bench/stream.py [--res 256] [--edits 12] [--orbit-s 10]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PARTY, SECRET = "bench-stream", "bench-stream-secret"
ORBIT_STEP_S = 0.05  # the web page sends at most 20 camera moves a second while dragging
START_S = 300  # render processes start (a cold kernel cache compiles first)


def start_member(home: Path) -> tuple[subprocess.Popen, str]:
    """A headless member whose events go to a file (a pipe nobody reads would fill and stall it)."""
    home.mkdir(parents=True)
    log = home / "events.jsonl"
    cmd = [sys.executable, "-m", "meshrender", "peer", "--headless", "--json", "--party", PARTY, "--secret",
           SECRET, "--home", str(home), "--threads", "1", "--backend", "cpu", "--no-web"]  # fmt: skip
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and p.poll() is None:
        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        addr = [f"{e['addrs'][0]}/p2p/{e['peer_id']}" for e in events if e["event"] == "listening"]
        if addr and any(e["event"] == "renderer-state" and e["state"] == "ready" for e in events):
            return p, addr[0]
        time.sleep(0.2)
    raise SystemExit("a member peer did not start")


def q(values: list[float], f: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(f * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--spp", type=int, default=64)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--edits", type=int, default=12)
    ap.add_argument("--orbit-s", type=float, default=10.0)
    args = ap.parse_args()

    import shutil
    from types import SimpleNamespace

    import trio

    from meshrender.cli_stream import watch_files
    from meshrender.imagestream import encode_frame
    from meshrender.node import Peer
    from meshrender.scene.load import load_scene
    from meshrender.settings import RenderSettings
    from meshrender.streaming import StreamSession

    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    members = [start_member(tmp / f"m{i}") for i in range(2)]
    shutil.copytree(REPO / "meshrender" / "data" / "cornell", tmp / "scene")
    toml = tmp / "scene" / "cornell.toml"
    desc = load_scene(toml)
    settings = RenderSettings(width=args.res, height=args.res, spp=args.spp, pass_spp=1, max_depth=8,
                              bucket_px=args.tile)  # fmt: skip
    coord = Peer(home=tmp / "s", party=PARTY, secret=SECRET.encode(), bootstrap=[a for _, a in members],
                 backend="cpu", threads=1)  # fmt: skip
    out: dict = {}

    async def run():
        async with trio.open_nursery() as n:
            await n.start(coord.run)
            session = StreamSession(coord, desc, settings)
            await n.start(session.run)
            with trio.fail_after(START_S):
                while len(session.crew.workers) < 3:  # both members and our own renderer
                    await trio.sleep(0.1)
            print(f"workers: {len(session.crew.workers)}; edits...", file=sys.stderr)
            with session.watch("bench") as w:
                first = await w.next()
                out["first_frame_s"] = round(time.monotonic() - session.started_s, 3)
                out["peers"] = len(first.peers)
                lat: dict[str, list[float]] = {"camera": [], "material": []}
                moved: dict[str, list[int]] = {"camera": [], "material": []}
                served: dict[str, list[int]] = {"camera": [], "material": []}
                mat = session.status()["materials"][0]["name"]
                for i in range(args.edits):
                    kind = "camera" if i % 2 == 0 else "material"
                    await trio.sleep(0.3)  # mid-render: the previous version is a few passes in
                    before = coord.transfers["bytes_out"]
                    t0 = time.monotonic()
                    if kind == "camera":
                        v = await session.orbit(yaw_deg=3.0)
                    else:
                        v = await session.set_material(mat, color=(0.2 + 0.05 * i, 0.5, 0.5))
                    while (f := await w.next()).version < v:
                        pass
                    lat[kind].append(time.monotonic() - t0)
                    moved[kind].append(session.last_edit["bytes_new"])
                    await trio.sleep(0.5)  # the members fetch the version's chunks meanwhile
                    served[kind].append(coord.transfers["bytes_out"] - before)
                out["latency"], out["moved"], out["served"] = lat, moved, served

                async def orbit(stop: trio.Event):
                    while not stop.is_set():
                        await session.orbit(yaw_deg=1.0)
                        await trio.sleep(ORBIT_STEP_S)

                print("orbiting...", file=sys.stderr)
                stop = trio.Event()
                frames, newest, sizes = 0, 0, {"png": [], "jpeg": [], "webp": []}
                async with trio.open_nursery() as o:
                    o.start_soon(orbit, stop)
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < args.orbit_s:
                        f = await w.next()
                        frames += 1
                        newest += f.version == session.version
                        if frames % 5 == 1:
                            for fmt in sizes:
                                sizes[fmt].append(len(encode_frame(f.image, exposure=f.exposure, fmt=fmt)))
                    stop.set()
                out["orbit"] = {"fps": frames / args.orbit_s, "newest": newest / max(frames, 1),
                                "versions": session.version, "bytes": sizes}  # fmt: skip
                # saving the scene file: the watcher reloads it (a camera moved in the file)
                quiet = SimpleNamespace(json=True)
                n.start_soon(watch_files, session, desc, quiet, lambda: load_scene(toml))
                await trio.sleep(0.5)
                text = toml.read_text()
                saves: dict[str, list[float]] = {"version": [], "preview": []}
                for i in range(args.edits):
                    await trio.sleep(0.5)
                    before = session.version
                    t0 = time.monotonic()
                    moved = f"position = [{0.01 * (i + 1)}, 0.0, 3.9]"
                    toml.write_text(text.replace("position = [0.0, 0.0, 3.9]", moved))
                    while session.version == before:
                        await trio.sleep(0.001)
                    saves["version"].append(time.monotonic() - t0)
                    while (f := await w.next()).version < session.version:
                        pass
                    saves["preview"].append(time.monotonic() - t0)
                out["saves"] = saves
            session.stop()
            n.cancel_scope.cancel()

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the watcher's lines ("reloaded ...")
            trio.run(run)
    finally:
        for p, _ in members:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    print(f"3-peer loopback party (2 members + the streaming peer, 1 render thread each), Cornell box "
          f"{args.res}x{args.res}, 1 spp passes of {args.tile}px buckets")  # fmt: skip
    print(f"first preview after the session started: {out['first_frame_s']:.3f} s")
    for kind, xs in out["latency"].items():
        ms = [1000 * x for x in xs]
        print(f"edit -> first preview of the new version, {kind}: median {statistics.median(ms):.0f} ms, "
              f"p90 {q(ms, 0.9):.0f} ms, max {max(ms):.0f} ms ({len(ms)} edits)")  # fmt: skip
        new, served = statistics.median(out["moved"][kind]), statistics.median(out["served"][kind])
        print(f"  scene bytes new per {kind} edit: median {new:,.0f}; served to the 2 members: "
              f"median {served:,.0f} bytes")  # fmt: skip
    for what, xs in out["saves"].items():
        ms = [1000 * x for x in xs]
        print(f"scene file saved -> {'new version made' if what == 'version' else 'its first preview'}: "
              f"median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms ({len(ms)} saves)")  # fmt: skip
    o = out["orbit"]
    print(f"continuous orbit ({1 / ORBIT_STEP_S:.0f} moves/s, {args.orbit_s:.0f} s): {o['fps']:.1f} "
          f"previews/s, {100 * o['newest']:.0f}% of them of the newest version ({o['versions']} versions)")
    for fmt, xs in o["bytes"].items():
        m = statistics.mean(xs)
        print(f"  {fmt}: {m:,.0f} bytes per preview, {m * o['fps'] / 1024:,.0f} KiB/s at that rate")


if __name__ == "__main__":
    main()

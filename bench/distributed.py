"""Distributed frames: 2 peers x 1 thread against 1 peer x 1 thread on one frame, side by side.

Each configuration is a coordinator (`meshrender render --party`, rendering too, 1 thread) with
0 or 1 headless worker peers (1 thread). Prints the job's time, the speedup, coordination overhead
per unit (how long a renderer waits between two units: from one result's arrival to the next's,
less the next unit's render time) and the time from the job's start to its first accepted result
(scene load and kernel compile or cache load on the first unit), and the time writing the outputs
takes. Figures only: nothing here asserts a time.

    python bench/distributed.py [--res 512] [--spp 64] [--pass-spp 16] [--tile 64]
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTY, SECRET = "bench-dist", "bench-secret"


def start_peer(home: Path, bootstrap: str | None = None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "meshrender", "peer", "--headless", "--json", "--party", PARTY,
           "--secret", SECRET, "--home", str(home), "--threads", "1", "--backend", "cpu"]  # fmt: skip
    if bootstrap:
        cmd += ["--bootstrap", bootstrap]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        ev = json.loads(line)
        if ev["event"] == "listening":
            return p, f"{ev['addrs'][0]}/p2p/{ev['peer_id']}"
    raise SystemExit("a peer did not start")


def run(workers: int, args, root: Path) -> dict:
    procs = []
    try:
        anchor = None
        for i in range(workers):
            p, addr = start_peer(root / f"w{workers}-{i}", anchor)
            procs.append(p)
            anchor = anchor or addr
        time.sleep(2.0)  # renderers warm
        # alone: no bootstrap; mDNS on loopback (what --listen names) finds nobody
        door = ["--bootstrap", anchor] if anchor else ["--mdns"]
        cmd = [sys.executable, "-m", "meshrender", "render", "cornell", "--party", PARTY, "--secret", SECRET,
               *door, "--home", str(root / f"c{workers}"), "--threads", "1", "--backend", "cpu",
               "--res", f"{args.res}x{args.res}", "--spp", str(args.spp), "--pass-spp", str(args.pass_spp),
               "--tile", str(args.tile), "--json"]  # fmt: skip
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        job_dir = root / f"c{workers}" / "results" / summary["job_id"]
        job = json.loads((job_dir / "job.json").read_text())
        units = job["units"]
        by_peer: dict[str, list[dict]] = {}
        for u in units:
            by_peer.setdefault(u["peer"], []).append(u)
        # overhead per unit: how long a peer's renderer waits between units, i.e. from one result's
        # arrival at the coordinator to the next one's, less that next unit's render seconds
        # (everything but rendering: result transfer, checks, storing, scheduling, the next lease)
        gaps = []
        for us in by_peer.values():
            us.sort(key=lambda u: u["at_s"])
            gaps += [b["at_s"] - a["at_s"] - b["seconds"] for a, b in itertools.pairwise(us)]
        return {
            "peers": workers + 1,
            "wall_s": round(wall, 2),
            "job_s": summary["seconds"],
            "units": len(units),
            "units_by_peer": sorted((len(us) for us in by_peer.values()), reverse=True),
            "first_result_s": summary["first_result_s"],
            "first_unit_render_s": round(
                max(min(us, key=lambda u: u["at_s"])["seconds"] for us in by_peer.values()), 2
            ),
            "outputs_s": round(job["finished_s"] - max(u["at_s"] for u in units), 2),
            "overhead_ms_per_unit": round(1000 * sum(gaps) / max(len(gaps), 1), 2),
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--spp", type=int, default=64)
    ap.add_argument("--pass-spp", type=int, default=16)
    ap.add_argument("--tile", type=int, default=64)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mr-bench-dist-"))
    one = run(0, args, root)
    print(json.dumps(one), flush=True)
    two = run(1, args, root)
    print(json.dumps(two), flush=True)
    print(json.dumps({"speedup_2x1_over_1x1": round(one["job_s"] / two["job_s"], 2)}))


if __name__ == "__main__":
    main()

"""`meshrender demo` on a busy machine with an empty kernel cache: how long it takes, and what it says.

Starts N busy loops (`sh -c 'while :; do :; done'`, killed at the end whatever happens), then runs
the real CLI's demo with MESHRENDER_CACHE pointing at a fresh folder, so every peer compiles the
kernel from nothing while the loops take the cores. Prints the wall time, the exit status, the
load average before and after, each peer's share, and how many progress lines ("no unit finished
for …", "renderer compiling kernels …") reached the terminal. Other work on the machine counts
too: the load average says how busy it really was.

Run: python bench/demo_busy.py [--loops 6] [--peers 3] [--timeout 1500] [demo options after --]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", type=int, default=6, help="busy loops beside the demo (default 6)")
    ap.add_argument("--peers", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1500.0, help="give up after this many seconds")
    ap.add_argument("demo_args", nargs="*", help="passed to `meshrender demo` (after --)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meshrender-demo-busy-"))
    env = {**os.environ, "MESHRENDER_CACHE": str(work / "cache")}
    cmd = [sys.executable, "-m", "meshrender", "demo", "--json", "--peers", str(args.peers),
           "-o", str(work / "demo.png"), *args.demo_args]  # fmt: skip
    load_before = os.getloadavg()
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(args.loops)]
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout)
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", exc.stdout or "", exc.stderr or ""
        out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
    finally:
        wall = time.monotonic() - t0
        for p in loops:
            p.kill()
            p.wait()
    load_after = os.getloadavg()
    try:
        summary = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary = {}
    lines = err.splitlines()
    report = {
        "loops": args.loops,
        "cores": os.cpu_count(),
        "exit": rc,
        "wall_s": round(wall, 1),
        "load_before": [round(x, 1) for x in load_before],
        "load_after": [round(x, 1) for x in load_after],
        "units_by_peer": summary.get("units_by_peer"),
        "stall_lines": sum("no unit finished for" in line for line in lines),
        "multi_line_libp2p_blocks": sum(line.strip().startswith("Timeout: ") for line in lines),
        "stderr_lines": len(lines),
        "folder": str(work),
    }
    print(json.dumps(report, indent=2))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

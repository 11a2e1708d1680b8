"""The chaos run, longer: a queue of jobs on a 4-peer loopback party while a seeded driver kills,
freezes and restarts peers (the coordinator included) until `--faults` faults have landed (or
`--seconds` have passed, or the queue is empty). The driver and every check are
tests/test_chaos.py's `Chaos` (see its docstring): every job done, its result rows exactly its
units once each, the run that finished it accepting each unit once, every image bit-identical to
a one-process render of the job's spec, no peer exiting on its own, nothing left leased.

    python bench/chaos.py [--seed N] [--faults 40] [--seconds 600] [--jobs 16] [--keep DIR]

Prints the seed, the faults injected by kind (and whom they hit), jobs done, units, units
accepted, units lost and accepted twice, units leased and re-leased, duplicates handed out, how
many coordinator runs the jobs took, and the times (faults, draining the queue after them, the
whole run). Exits 1 if anything did not hold, after printing what and the schedule of faults;
`--seed` replays a run's schedule. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from test_chaos import TEST_JOBS, Chaos  # noqa: E402

SIZES = ("32x32", "48x48", "64x64")


def job_list(n: int, rng: random.Random) -> list[tuple[str, ...]]:
    """The test's jobs, then more like them (other seeds, sizes, passes; an animation every few)."""
    jobs = list(TEST_JOBS)
    k = 100
    while len(jobs) < n:
        k += 1
        if k % 5 == 0:
            jobs.append(
                (
                    "cornell_orbit",
                    "--res",
                    "32x32",
                    "--spp",
                    "8",
                    "--pass-spp",
                    "4",
                    "--tile",
                    "16",
                    "--frames",
                    f"{k % 21 + 3}..{k % 21 + 5}",
                )
            )
            continue
        spp = rng.choice((8, 16, 24, 32))
        jobs.append(
            (
                "cornell",
                "--res",
                rng.choice(SIZES),
                "--spp",
                str(spp),
                "--pass-spp",
                "4",
                "--tile",
                "16",
                "--seed",
                str(k),
                "--priority",
                str(rng.randint(-2, 2)),
            )
        )
    return jobs[:n]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, help="the fault schedule's seed (default: a random one, printed)")
    p.add_argument("--faults", type=int, default=40, help="stop after this many faults (default 40)")
    p.add_argument("--seconds", type=float, default=600.0, help="or after this long (default 600)")
    p.add_argument("--jobs", type=int, default=16, help="jobs queued (default 16: the test's 6 and more)")
    p.add_argument(
        "--keep", help="keep the peers' homes and logs here (default: a temporary folder, removed)"
    )
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="meshrender-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    jobs = job_list(args.jobs, random.Random(seed))
    chaos = Chaos(
        root, seed, chaos_s=args.seconds, faults=args.faults, jobs=jobs, submit_during=len(jobs) // 2
    )
    print(
        f"chaos seed {seed}: {len(jobs)} jobs, up to {args.faults} faults or {args.seconds:g} s, under {root}"
    )
    t0 = time.monotonic()
    report = chaos.run()
    renderers = {}

    def renderer_for(scene):
        from meshrender.render import Renderer

        key = id(scene)
        if key not in renderers:
            renderers[key] = (scene, Renderer(scene, backend="cpu"))
        return renderers[key][1]

    t1 = time.monotonic()
    chaos.compare_images(renderer_for)
    f = report.figures()
    frames = sum(j.get("frames_identical", 0) for j in report.jobs.values())
    print(f"seed                 {f['seed']}")
    print(
        f"faults injected      {f['faults']}  {json.dumps(f['faults_by_kind'])}, "
        f"{f['coordinator_faults_mid_job']} of them on the coordinator mid-job"
    )
    print(f"jobs done            {f['jobs_done']} of {f['jobs']}  ({f['coordinator_runs']} coordinator runs)")
    print(
        f"units                {f['units']}  accepted {f['units_accepted']}  lost {f['lost']}  "
        f"accepted twice {f['double_accepted']}"
    )
    print(
        f"units leased         {f['units_leased']}  re-leased {f['re_leased']}  duplicates {f['duplicates']}"
    )
    print(f"frames bit-identical {frames}")
    print(
        f"time                 faults {f['chaos_s']} s, drain {f['drain_s']} s, run {f['wall_s']} s, "
        f"local renders {time.monotonic() - t1:.1f} s, total {time.monotonic() - t0:.1f} s"
    )
    print(f"schedule             {report.schedule}")
    if report.problems:
        print(f"FAILED (replay: python bench/chaos.py --seed {seed}):")
        for line in report.problems:
            print(f"  {line}")
        print(f"homes and logs kept under {root}")
        return 1
    print("held: every job done, every image exact, no unit lost or accepted twice, nothing left leased")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

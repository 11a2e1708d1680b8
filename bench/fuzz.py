"""Long fuzzing runs of every decoder target: tests/test_fuzz_wire.py's TARGETS, and
tests/test_fuzz_scene.py's when that file is there.

Each target gets `--seconds` of fuzzing with atheris (coverage-guided libFuzzer, with meshrender's
modules instrumented) when it is installed (`pip install atheris`), else with Hypothesis (the
test file's structure-aware strategy and random bytes, in rounds of many examples). Either way a
wrapper around the target counts executions and keeps every input that raised anything (a target
raises only on a crash: documented errors are a pass inside it) or took more than CPU_S_MAX of
CPU, one reproducer per distinct failure, under the output folder (a temporary one unless `--out`
is given). With atheris each target runs in a child process that libFuzzer may end (an input
over `--rss-mb`, or hung past `--timeout-s`): its artifact is kept as a crash too and the child
is started again until the target's time is up. The seed corpus is the test files' own
(tests/data/fuzz/<kind>/), copied, so the repository's corpus is never written.

    python bench/fuzz.py [--seconds 60] [--targets frames,manifest] [--engine auto|atheris|hypothesis]

Prints per target: executions, executions per second while fuzzing, crashes (and where their
reproducers are), CPU-budget breaches, and wall time (start-up included). Exits 1 if anything
crashed or overran its budget.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
MODULES = ("test_fuzz_wire", "test_fuzz_scene")  # each with a module-level TARGETS dict
CPU_S_MAX = 1.0  # CPU seconds one input may take (as the test files' budget)
REPRODUCERS_MAX = 20  # distinct failures kept per target
STATS_EVERY_S = 1.0
CHILD_GRACE_S = 600.0  # an atheris child's start-up (instrumenting imports) on a busy machine, and more
ADDRESS_SPACE_BYTES = 8 << 30  # Hypothesis runs: an allocation past this is a MemoryError, a crash


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def load_targets(instrument: bool = False) -> dict[str, tuple[str, object, object]]:
    """name -> (module, target, module object); names are `module:target` when both files have it."""
    sys.path.insert(0, str(TESTS))
    found: dict[str, tuple[str, object, object]] = {}
    for mod_name in MODULES:
        if not (TESTS / f"{mod_name}.py").exists():
            continue
        if instrument:
            import atheris

            with atheris.instrument_imports(include=["meshrender", mod_name]):
                mod = importlib.import_module(mod_name)
        else:
            mod = importlib.import_module(mod_name)
        kind = mod_name.removeprefix("test_fuzz_")
        for name, fn in getattr(mod, "TARGETS", {}).items():
            key = name if name not in found else f"{kind}:{name}"
            found[key] = (mod_name, fn, mod)
    return found


def seed_inputs(mod_name: str, mod, name: str) -> list[bytes]:
    """A target's seed corpus: its module's `seed_inputs(name)` if it has one, else the files of
    tests/data/fuzz/<kind>/<name>/, else every file of tests/data/fuzz/<kind>/."""
    if hasattr(mod, "seed_inputs"):
        return list(mod.seed_inputs(name))
    base = TESTS / "data" / "fuzz" / mod_name.removeprefix("test_fuzz_")
    folder = base / name.split(":")[-1]
    files = sorted(folder.glob("*")) if folder.is_dir() else sorted(p for p in base.glob("*") if p.is_file())
    return [p.read_bytes() for p in files if p.is_file() and p.suffix != ".py"]


class Harness:
    """Wraps a target: counts executions, keeps failing inputs (one per distinct failure)."""

    def __init__(self, name: str, target, out: Path, stats_path: Path | None = None):
        self.name, self.target, self.out = name, target, out
        self.stats_path = stats_path
        self.execs = self.crashes = self.slow = 0
        self.first = self.last = 0.0  # monotonic times of the first and the latest execution
        self.signatures: dict[str, str] = {}  # failure -> reproducer path
        self._last = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)

    def __call__(self, data: bytes) -> None:
        self.execs += 1
        self.last = time.monotonic()
        self.first = self.first or self.last
        cpu = time.process_time()
        try:
            self.target(data)
        except Exception as exc:  # a target raises only on a crash: keep the input
            tb = traceback.extract_tb(exc.__traceback__)
            where = tb[-1] if tb else None
            self._keep(
                "crash",
                f"{type(exc).__name__} at {where.filename}:{where.lineno}" if where else repr(exc),
                data,
                "".join(traceback.format_exception(exc)),
            )
        spent = time.process_time() - cpu
        if spent > CPU_S_MAX:
            self._keep("slow", f"{spent:.1f} s of CPU", data, f"{spent:.2f} s of CPU on {len(data)} bytes\n")
        if self.stats_path is not None and time.monotonic() - self._last > STATS_EVERY_S:
            self.write_stats()

    def _keep(self, kind: str, signature: str, data: bytes, text: str) -> None:
        if kind == "crash":
            self.crashes += 1
        else:
            self.slow += 1
        key = f"{kind}: {signature}"
        if key in self.signatures or len(self.signatures) >= REPRODUCERS_MAX:
            return
        stem = self.out / f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}"
        stem.with_suffix(".bin").write_bytes(data)
        stem.with_suffix(".txt").write_text(f"{key}\n\n{text}")
        self.signatures[key] = str(stem.with_suffix(".bin"))

    def write_stats(self) -> None:
        self._last = time.monotonic()
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "execs": self.execs,
                    "crashes": self.crashes,
                    "slow": self.slow,
                    "fuzz_s": self.last - self.first,
                    "signatures": self.signatures,
                }
            )
        )
        os.replace(tmp, self.stats_path)


# ---------------------------------------------------------------------------- atheris


def atheris_child(name: str, seconds: float, out: Path, corpus: Path, rss_mb: int, timeout_s: int) -> int:
    """In a child process: fuzz one target with libFuzzer until `seconds` have passed."""
    import atheris

    targets = load_targets(instrument=True)
    _, fn, _ = targets[name]
    harness = Harness(name, fn, out, stats_path=out / "stats.json")
    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={max(1, int(seconds))}",
        f"-rss_limit_mb={rss_mb}",
        f"-timeout={timeout_s}",
        f"-artifact_prefix={out}/",
        "-max_len=65536",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, harness)
    try:
        atheris.Fuzz()
    finally:
        harness.write_stats()
    return 0


def run_atheris(name: str, seconds: float, out: Path, seeds: list[bytes], args) -> dict:
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(data)
    totals = {"execs": 0, "crashes": 0, "slow": 0, "fuzz_s": 0.0, "signatures": {}}
    t0 = time.monotonic()
    restarts = 0
    while time.monotonic() - t0 < seconds - 1:
        left = seconds - (time.monotonic() - t0)
        run_dir = out / f"run{restarts}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--seconds",
            str(left),
            "--out",
            str(run_dir),
            "--corpus",
            str(corpus),
            "--rss-mb",
            str(args.rss_mb),
            "--timeout-s",
            str(args.timeout_s),
        ]
        try:  # libFuzzer ends the child at its time limit; this only catches a child that does not
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=left + CHILD_GRACE_S)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            (run_dir / "child-stderr.txt").write_text(err[-20000:])
            proc = subprocess.CompletedProcess(cmd, -9, "", err)
            totals["crashes"] += 1
            totals["signatures"][f"child still running {CHILD_GRACE_S:.0f} s past its time"] = str(run_dir)
        stats_file = run_dir / "stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        for k in ("execs", "crashes", "slow", "fuzz_s"):
            totals[k] += stats.get(k, 0)
        totals["signatures"].update(stats.get("signatures", {}))
        artifacts = [
            p
            for p in run_dir.glob("*")
            if p.name.split("-")[0] in ("crash", "oom", "timeout", "leak")
            and p.suffix not in (".bin", ".txt")
        ]
        for p in artifacts:  # libFuzzer's own: an input over the RSS limit, or one that hung
            totals["crashes"] += 1
            totals["signatures"][f"libFuzzer {p.name.split('-')[0]}"] = str(p)
        if proc.returncode != 0 and not artifacts and not stats.get("crashes"):
            totals["crashes"] += 1
            (run_dir / "child-stderr.txt").write_text(proc.stderr[-20000:])
            totals["signatures"][f"child exited {proc.returncode}"] = str(run_dir / "child-stderr.txt")
        (run_dir / "libfuzzer.txt").write_text(proc.stderr[-20000:])
        if proc.returncode == 0:
            break
        restarts += 1
    totals["time_s"] = time.monotonic() - t0
    totals["restarts"] = restarts
    return totals


# ---------------------------------------------------------------------------- Hypothesis


def run_hypothesis(name: str, fn, mod, seconds: float, out: Path, seeds: list[bytes]) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    harness = Harness(name, fn, out)
    for data in seeds:
        harness(data)
    structured = getattr(mod, "STRUCTURED", {}).get(name.split(":")[-1])
    strategy = (
        st.binary(max_size=4096) if structured is None else st.one_of(structured, st.binary(max_size=4096))
    )
    t0 = time.monotonic()
    rounds = 0
    while time.monotonic() - t0 < seconds:
        rounds += 1

        @settings(
            max_examples=50,
            deadline=None,
            database=None,
            derandomize=False,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def run(data):
            if time.monotonic() - t0 <= seconds:  # past the budget the round's last examples are skipped
                harness(data)

        run()
    return {
        "execs": harness.execs,
        "crashes": harness.crashes,
        "slow": harness.slow,
        "signatures": harness.signatures,
        "fuzz_s": harness.last - harness.first,
        "time_s": time.monotonic() - t0,
        "rounds": rounds,
    }


# ---------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="fuzzing time per target (default 60)")
    p.add_argument("--targets", help="comma-separated target names (default: all)")
    p.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    p.add_argument("--out", help="where reproducers go (default: a new temporary folder)")
    p.add_argument("--rss-mb", type=int, default=2048, help="atheris: an input past this RSS is a crash")
    p.add_argument("--timeout-s", type=int, default=10, help="atheris: an input running longer is a crash")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return atheris_child(
            args.child, args.seconds, Path(args.out), Path(args.corpus), args.rss_mb, args.timeout_s
        )

    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "hypothesis"
    if engine == "atheris" and not have_atheris():
        print("atheris is not installed: pip install atheris (or --engine hypothesis)", file=sys.stderr)
        return 2
    if engine == "hypothesis":
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = ADDRESS_SPACE_BYTES if hard == resource.RLIM_INFINITY else min(hard, ADDRESS_SPACE_BYTES)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="meshrender-fuzz-"))
    targets = load_targets()
    chosen = args.targets.split(",") if args.targets else list(targets)
    unknown = [t for t in chosen if t not in targets]
    if unknown:
        print(f"unknown targets {unknown}; there are {', '.join(targets)}", file=sys.stderr)
        return 2
    missing = [m for m in MODULES if not (TESTS / f"{m}.py").exists()]
    print(
        f"engine {engine}, {args.seconds:g} s per target, {len(chosen)} targets"
        + (f" ({', '.join(missing)} not there: skipped)" if missing else "")
        + f"; reproducers under {out}"
    )
    print(f"{'target':<22} {'execs':>10} {'execs/s':>9} {'crashes':>8} {'slow':>5} {'time s':>7}")
    any_crash = False
    for name in chosen:
        mod_name, fn, mod = targets[name]
        target_out = out / name.replace(":", "-")
        seeds = seed_inputs(mod_name, mod, name)
        if engine == "atheris":
            r = run_atheris(name, args.seconds, target_out, seeds, args)
        else:
            r = run_hypothesis(name, fn, mod, args.seconds, target_out, seeds)
        rate = r["execs"] / r["fuzz_s"] if r["fuzz_s"] else 0.0  # while fuzzing: start-up left out
        print(
            f"{name:<22} {r['execs']:>10} {rate:>9.0f} {r['crashes']:>8} {r['slow']:>5} {r['time_s']:>7.1f}"
        )
        for sig, path in r["signatures"].items():
            print(f"    {sig}\n      reproducer: {path}")
        any_crash |= bool(r["crashes"] or r["slow"])
    if not args.out and not any_crash:
        shutil.rmtree(out, ignore_errors=True)
    return 1 if any_crash else 0


if __name__ == "__main__":
    sys.exit(main())

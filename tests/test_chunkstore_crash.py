"""Crash consistency: a writer process SIGKILLed at seeded random moments never leaves the store
torn — every blob under a real name is whole and matches its name, every put that returned is
still there, the index agrees with the files, and leftover temp files are gone after reopening."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zstandard

from meshrender.store.chunkstore import ChunkStore
from meshrender.store.hashing import chunk_hash

SEED = 20240611
KILLS = 6
KILL_AFTER_S = (0.05, 0.6)  # after the writer says it is ready

# The writer: puts chunks of 1-4 MiB (half random bytes, half zeros) forever, alone or in small
# batches, printing each hash once its put has returned.
WRITER = r"""
import random, sys
from meshrender.store.chunkstore import ChunkStore

root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)

def chunk():
    n = rng.randint(1 << 20, 4 << 20)
    return rng.randbytes(n // 2) + bytes(n - n // 2)

with ChunkStore(root) as store:
    print("ready", flush=True)
    while True:
        if rng.random() < 0.3:
            out = store.put_many([chunk() for _ in range(3)])
        else:
            out = [store.put(chunk())]
        for h, _ in out:
            print(h, flush=True)
"""


def _run_and_kill(root: Path, seed: int, delay_s: float) -> list[str]:
    """Start the writer, SIGKILL it `delay_s` after it is ready; the hashes whose put returned."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            if line.strip() == "ready":
                ready.set()
            else:
                lines.append(line.strip())
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(30), "writer never became ready"
        assert proc.poll() is None, f"writer exited early with {proc.returncode}"
        time.sleep(delay_s)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
    return lines


def _check_blob_tree(root: Path) -> int:
    """Every file under blobs/ is a whole zstd frame whose content hashes to the file's name."""
    n = 0
    dctx = zstandard.ZstdDecompressor()
    for path in (root / "blobs").rglob("*"):
        if path.is_file():
            assert path.name.endswith(".zst"), path
            data = dctx.decompress(path.read_bytes())
            assert chunk_hash(data) == path.name[: -len(".zst")], f"torn blob {path}"
            n += 1
    return n


@pytest.mark.slow
def test_sigkill_never_tears_the_store(tmp_path):
    rng = random.Random(SEED)
    root = tmp_path / "store"
    returned: set[str] = set()
    for kill in range(KILLS):
        delay_s = rng.uniform(*KILL_AFTER_S)
        returned.update(_run_and_kill(root, rng.randrange(1 << 30), delay_s))
        context = f"seed {SEED}, kill {kill} after {delay_s:.3f} s"

        files = _check_blob_tree(root)  # before reopening: nothing torn under a real name, even now
        with ChunkStore(root) as store:
            leftovers = [p for p in (root / "tmp").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
            assert leftovers == [], f"{context}: temp files left after reopen: {leftovers}"
            assert sorted(p.name for p in (root / "tmp").iterdir()) == sorted(
                [store._session.name, f"{store._session.name}.lock"]
            ), context
            report = store.verify()
            assert report["corrupt"] == [] and report["missing"] == [], f"{context}: {report}"
            assert report["orphans_quarantined"] == 0, f"{context}: {report}"
            assert report["ok"] == report["checked"], f"{context}: {report}"
            held = list(store.iter_hashes())
            assert len(held) == files, context  # index and files agree (orphans were adopted)
            for h in held:
                assert chunk_hash(store.get(h)) == h, context
            lost = returned - set(held)
            assert not lost, f"{context}: puts that returned were lost: {sorted(lost)[:3]}"
            assert store.stats()["quarantined_files"] == 0
    assert len(returned) >= KILLS, "the writer barely wrote anything: the test proved little"

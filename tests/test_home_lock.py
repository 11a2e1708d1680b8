"""One peer per home: a second peer, `render --party` or a `--to` client on a held home exits 2
naming the home and the holder's pid; queue clients keep working beside a running peer; kill -9
frees the lock; neither a render child nor a forked child keeps it. Damaged databases (empty,
truncated, foreign) are refused as damaged and left untouched; a busy one is reported as busy,
never with advice to move it aside; a missing one is made fresh."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO
from party import PARTY, SECRET, PeerProc, cli

from meshrender import jobs
from meshrender.errors import MeshrenderError
from meshrender.home import LOCK_NAME, HomeInUse, HomeLock
from meshrender.jobs import JobDB, JobError, JobSpec
from meshrender.settings import RenderSettings
from meshrender.store import chunkstore
from meshrender.store.chunkstore import ChunkStore, StoreError

HOLD = """
import sys, time
from meshrender.home import HomeLock
with HomeLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def in_use(home: Path, pid: int) -> str:
    return f"another meshrender peer is using {home} (pid {pid})"


@pytest.fixture
def holder():
    """Start a process that holds a home's lock (until the test ends or kills it)."""
    procs: list[subprocess.Popen] = []

    def start(home: Path) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(home)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def other_process_can_lock(home: Path) -> bool:
    probe = "import sys; from meshrender.home import HomeLock; print(HomeLock.in_use(sys.argv[1]) is None)"
    out = subprocess.run([sys.executable, "-c", probe, str(home)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


# ---------------------------------------------------------------------------- the lock itself


def test_a_held_home_names_the_holder_and_kill_9_frees_it(tmp_path, holder):
    home = tmp_path / "home"
    p = holder(home)
    assert (home / LOCK_NAME).read_text().strip() == str(p.pid)
    with pytest.raises(HomeInUse) as e:
        HomeLock(home).acquire()
    assert str(e.value) == in_use(home, p.pid) and e.value.pid == p.pid
    p.send_signal(signal.SIGKILL)
    p.wait()
    with HomeLock(home, peer=True) as lock:  # no stale lock to clean up after kill -9
        assert lock.held and (home / LOCK_NAME).read_text().strip() == str(os.getpid())
        assert not other_process_can_lock(home)
    assert other_process_can_lock(home)  # released on exit


def test_the_lock_nests_in_one_process_but_holds_one_peer(tmp_path):
    home = tmp_path / "home"
    with HomeLock(home):  # the CLI, before it opens the store and the queue
        with HomeLock(home, peer=True):  # then Peer.run
            with pytest.raises(HomeInUse) as e:  # a second Peer.run on the same home
                HomeLock(home, peer=True).acquire()
            assert str(e.value) == in_use(home, os.getpid())
        with HomeLock(home, peer=True):  # the first peer stopped: another may run
            pass
        assert not other_process_can_lock(home)
    assert other_process_can_lock(home)


def test_children_never_keep_the_lock(tmp_path):
    home = tmp_path / "home"
    lock = HomeLock(home).acquire()
    # a child started without closing descriptors, as a careless spawn would: close-on-exec saves it
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], close_fds=False)
    pid = os.fork()  # a forked child (no exec): the at-fork hook closes its copy
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    try:
        lock.release()
        assert other_process_can_lock(home)  # both children still alive
        assert child.poll() is None and os.waitpid(pid, os.WNOHANG) == (0, 0)
    finally:
        child.kill()
        child.wait()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_lock_file_that_is_a_symlink_is_refused(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(MeshrenderError, match="symbolic link"):
        HomeLock(home).acquire()
    assert not (tmp_path / "elsewhere").exists()


def test_the_tui_starts_no_peer_on_a_held_home_and_says_who_holds_it(tmp_path, holder, monkeypatch):
    import tui.app

    home = tmp_path / "home"
    p = holder(home)  # holds the home but serves no status socket (as `render --party` does)
    monkeypatch.setattr(tui.app, "ATTACH_BUSY_S", 0.3)
    started = []
    attach = tui.app.attach_or_start(home, lambda: started.append(1) or (lambda: None))
    with pytest.raises(HomeInUse) as e:
        attach(lambda item: None, lambda why: None)
    assert str(e.value) == in_use(home, p.pid) and not started


def test_a_tui_opened_while_the_homes_peer_starts_waits_for_its_socket(tmp_path, holder):
    """A peer holds its home's lock before it serves its status socket (and says "listening"
    before that too): a TUI that will start no peer of its own waits for the socket rather than
    saying no peer is there. Without the lock held, it says so at once."""
    import socket

    import tui.app
    from meshrender.local import socket_path

    home = tmp_path / "home"
    with pytest.raises(OSError):
        tui.app.attach_or_start(home, None)(lambda item: None, lambda why: None)
    holder(home)
    path = socket_path(home)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    heard: list[bytes] = []

    def serve_later() -> None:
        time.sleep(0.8)
        server.bind(str(path))
        server.listen(1)
        conn, _ = server.accept()
        heard.append(conn.recv(64))
        conn.close()

    t = threading.Thread(target=serve_later, daemon=True)
    t.start()
    try:
        attached = tui.app.attach_or_start(home, None)(lambda item: None, lambda why: None)
        t.join(10)
        attached()
        assert heard == [b'{"watch": true}\n']
    finally:
        server.close()


# ---------------------------------------------------------------------------- peers and commands


def children_of(pid: int, wait_s: float = 60.0) -> set[int]:
    """The child processes of `pid`, waiting up to `wait_s` for there to be one."""
    deadline = time.monotonic() + wait_s
    while True:
        found = {
            int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()
        }
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def open_files(pid: int) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            pass
    return found


@pytest.mark.slow
def test_a_second_peer_on_one_home_exits_2_and_queue_clients_work_beside_it(tmp_path):
    home = tmp_path / "a"
    a = PeerProc(home, "--threads", "1", "--backend", "cpu")
    try:
        message = in_use(home, a.proc.pid)
        second = cli("peer", "--headless", "--json", "--party", PARTY, "--secret", SECRET, home=home)
        assert second.returncode == 2 and message in second.stderr, second.stderr[-2000:]
        render = cli("render", "cornell", "--res", "8x8", "--spp", "1", "--party", PARTY, "--secret", SECRET,
                     "--bootstrap", a.addr, home=home)  # fmt: skip
        assert render.returncode == 2 and message in render.stderr, render.stderr[-2000:]
        fetch = cli("store", "fetch", "ab" * 32, "--party", PARTY, "--secret", SECRET, "--bootstrap", a.addr,
                    home=home)  # fmt: skip
        assert fetch.returncode == 2 and message in fetch.stderr, fetch.stderr[-2000:]
        listed = cli("jobs", "--json", home=home)  # a queue client, not a peer: SQLite shares the queue
        assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr[-2000:]
        assert cli("store", "stats", home=home).returncode == 0
        children = children_of(a.proc.pid)  # its render child, started with the peer
        assert children, "the peer's render child is not running"
        lock = str((home / LOCK_NAME).resolve())
        for child in children:
            assert lock not in open_files(child)
        assert lock in open_files(a.proc.pid)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        again = PeerProc(home, "--threads", "1", "--backend", "cpu")  # kill -9 left no stale lock
        try:
            assert again.peer_id == a.peer_id  # the same home, the same identity
        finally:
            again.stop()
    finally:
        a.stop()


def test_a_to_client_on_a_held_client_home_exits_2(tmp_path):
    home = tmp_path / "home"
    with HomeLock(home / "client"):
        r = cli("jobs", "--to", "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWNotAPeer", "--party", PARTY, "--secret",
                SECRET, home=home, timeout=60)  # fmt: skip
    assert r.returncode == 2 and in_use(home / "client", os.getpid()) in r.stderr, r.stderr[-2000:]


# ---------------------------------------------------------------------------- damaged and busy databases


def spec(seed: int) -> JobSpec:
    settings = RenderSettings(width=32, height=32, spp=16, pass_spp=16, bucket_px=16, seed=seed)
    return JobSpec(scene_id="ab" * 32, settings=settings)


def queue_of(path: Path, n: int) -> bytes:
    """A real job database with `n` jobs (several pages); returns its bytes."""
    with JobDB(path) as db:
        for i in range(n):
            db.submit(spec(i), now=1000.0 + i)
    return path.read_bytes()


def assert_damaged(text: str, path: Path, size: int) -> None:
    assert f"{path}: the job database is damaged ({size:,} bytes)" in text and "move it aside" in text, text
    assert "Traceback" not in text


def test_an_empty_job_database_is_damaged_not_an_empty_queue(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    path = home / "jobs.sqlite"
    path.write_bytes(b"")
    with pytest.raises(JobError) as e:
        JobDB(path)
    assert_damaged(str(e.value), path, 0)
    r = cli("submit", "cornell", "--res", "8x8", home=home)  # the CLI says so, and queues nothing
    assert r.returncode == 2, r.stderr
    assert_damaged(r.stderr, path, 0)
    assert path.read_bytes() == b"" and not any(p.name.startswith("jobs.sqlite-") for p in home.iterdir())


@pytest.mark.parametrize("cut", ["mid-page", "whole-pages", "mid-header"])
def test_a_truncated_job_database_is_damaged_and_left_as_it_is(tmp_path, cut):
    home = tmp_path / "home"
    path = home / "jobs.sqlite"
    whole = queue_of(path, 60)
    page = int.from_bytes(whole[16:18], "big")
    assert len(whole) >= 3 * page
    size = {"mid-page": page + page // 2, "whole-pages": 2 * page, "mid-header": 60}[cut]
    path.write_bytes(whole[:size])
    with pytest.raises(JobError) as e:
        JobDB(path)
    assert_damaged(str(e.value), path, size)
    r = cli("jobs", home=home)  # the CLI says so too
    assert r.returncode == 2, r.stderr
    assert_damaged(r.stderr, path, size)
    assert path.read_bytes() == whole[:size]
    assert not any(p.name.startswith("jobs.sqlite-") for p in home.iterdir())  # nor anything beside it


def test_a_peer_on_a_home_with_an_empty_queue_file_exits_2(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "jobs.sqlite").write_bytes(b"")
    r = cli("peer", "--headless", "--json", "--party", PARTY, "--secret", SECRET, "--threads", "1", home=home)
    assert r.returncode == 2, r.stderr[-2000:]
    assert_damaged(r.stderr, home / "jobs.sqlite", 0)
    assert (home / "jobs.sqlite").read_bytes() == b""


def test_a_busy_job_database_is_in_use_not_damaged(tmp_path, monkeypatch):
    path = tmp_path / "jobs.sqlite"
    queue_of(path, 3)
    monkeypatch.setattr(jobs, "BUSY_TIMEOUT_S", 0.2)
    opened = JobDB(path)  # opened before the other process took the lock
    other = sqlite3.connect(path, isolation_level=None)  # another process's long write transaction
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(JobError) as e:
            JobDB(path)
        with pytest.raises(JobError) as during:
            opened.cancel(opened.list()[0].id, now=2000.0)
        for text in (str(e.value), str(during.value)):
            assert "in use by another process" in text and "nothing is wrong with the file" in text, text
            assert "move it aside" not in text and "damaged" not in text
    finally:
        other.execute("ROLLBACK")
        other.close()
        opened.close()
    with JobDB(path) as db:  # and the queue is as it was
        assert [r.state for r in db.list()] == ["queued"] * 3


def test_a_busy_or_empty_chunk_index_is_named_for_what_it_is(tmp_path, monkeypatch):
    root = tmp_path / "store"
    ChunkStore(root).close()
    index = root / "index.sqlite3"
    monkeypatch.setattr(chunkstore, "BUSY_TIMEOUT_S", 0.2)
    other = sqlite3.connect(index, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError) as e:
            ChunkStore(root)
        assert "in use by another process" in str(e.value) and "move it aside" not in str(e.value), e.value
    finally:
        other.execute("ROLLBACK")
        other.close()
    index.write_bytes(b"")
    with pytest.raises(StoreError) as e:
        ChunkStore(root)
    assert f"{index}: the chunk index is damaged (0 bytes)" in str(e.value) and "store verify" in str(e.value)
    assert index.read_bytes() == b""


def test_a_missing_job_database_is_made_fresh_even_by_many_at_once(tmp_path):
    path = tmp_path / "home" / "jobs.sqlite"
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            with JobDB(path) as db:
                db.submit(spec(7), now=1.0)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.stat().st_size > 0
    with JobDB(path) as db:
        assert len(db.list()) == 1
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("jobs.sqlite")) == []


def test_opening_the_queue_again_in_a_process_keeps_its_other_connections_working(tmp_path):
    """Checking a database file must not open it: closing any descriptor of it drops every POSIX
    lock the process holds on it, and another process closing its connection then takes itself
    for the last one and removes the write-ahead log that our connection still writes to."""
    path = tmp_path / "jobs.sqlite"
    count = "import sys; from meshrender.jobs import JobDB; print(len(JobDB(sys.argv[1]).list()))"

    def jobs_seen_by_another_process() -> str:
        r = subprocess.run([sys.executable, "-c", count, str(path)], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout.strip()

    with JobDB(path) as kept:
        kept.submit(spec(1), now=1.0)
        JobDB(path).close()  # a second connection in this process, opened and closed (as a peer does)
        assert jobs_seen_by_another_process() == "1"  # which then closed: was it the last one?
        kept.submit(spec(2), now=2.0)
        assert jobs_seen_by_another_process() == "2"

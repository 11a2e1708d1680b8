"""Subprocess peers on 127.0.0.1 for the party tests: start, read their JSON events, stop."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import REPO

PARTY, SECRET = "test-party", "correct horse"


def cli(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "meshrender", *args, "--home", str(home)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class PeerProc:
    """A peer process; `events` collects its JSON event lines."""

    def __init__(
        self,
        home: Path,
        *extra: str,
        script: str | None = None,
        secret: str = SECRET,
        prefix: list[str] = (),
        command: tuple[str, ...] = ("peer", "--headless", "--json"),
    ):
        """`prefix` runs the peer through another command (`ip netns exec NS`, say); `command` is
        the meshrender command that runs it (`stream SCENE --json`, say)."""
        if script is None:
            cmd = [*prefix, sys.executable, "-m", "meshrender", *command]
        else:
            cmd = [*prefix, sys.executable, "-c", script]
        cmd += ["--party", PARTY, "--secret", secret, "--home", str(home), *extra]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.events: list[dict] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ev = self.wait_for("listening", timeout=60)
        self.peer_id = ev["peer_id"]
        self.addr = (
            f"{ev['addrs'][0]}" if "/p2p/" in ev["addrs"][0] else f"{ev['addrs'][0]}/p2p/{self.peer_id}"
        )

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(ev)
            self._q.put(ev)

    def wait_for(self, kind: str, timeout: float = 30, **match) -> dict:
        deadline = time.monotonic() + timeout
        seen = [e for e in self.events if e["event"] == kind and all(e.get(k) == v for k, v in match.items())]
        if seen:
            return seen[0]
        while time.monotonic() < deadline:
            try:
                ev = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if ev["event"] == kind and all(ev.get(k) == v for k, v in match.items()):
                return ev
            if self.proc.poll() is not None:
                break
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        raise AssertionError(
            f"no {kind} event {match} within {timeout} s; events {self.events[-8:]} {err[-2000:]}"
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

"""Private LANs in Linux network namespaces, for tests that multicast (mDNS).

`party_lan(n)` builds, for one `with` block:

    ns mr<pid>x<k>br       bridge br0, no address, multicast snooping off (every frame floods)
    ns mr<pid>x<k>m<i>     eth0 = one end of a veth pair whose other end (p<i>) sits in the bridge
                           ns on br0; 10.231.0.<i+1>/24; lo up; route 224.0.0.0/4 dev eth0

Nothing is created in the host's namespace: each veth pair is made inside its member namespace
with the peer end placed straight into the bridge namespace, so no test packet can reach a real
interface. Names carry the pid and a per-process counter, so parallel runs and repeated calls do
not collide (the same subnet in two runs is fine: each LAN is its own bridge). On exit, even after
a failure, any process still inside the namespaces (only this run's can be there) is killed by id
and the namespaces are deleted. Run a command inside a member with `member.argv(...)`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

IP = shutil.which("ip") or "/usr/sbin/ip"
SUBNET = "10.231.0"  # a private /24 nobody routes; members get .2 upward
MEMBERS_MAX = 200  # addresses .2 .. .201 of the /24
IP_TIMEOUT_S = 10.0  # one `ip` command; they take milliseconds

_calls = itertools.count()


@dataclass(frozen=True)
class Member:
    """One machine of the LAN: its namespace and its address."""

    ns: str
    ip: str

    def argv(self, *cmd: str) -> list[str]:
        """`cmd` run inside this member's namespace."""
        return [IP, "netns", "exec", self.ns, *cmd]


def netns_unusable() -> str | None:
    """Why namespaces cannot be made here (not root, no `ip`), or None when they can. A root run
    whose namespaces then fail to build is a failure, not a skip."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.access(IP, os.X_OK):
        return "iproute2's `ip` is not installed"
    return None


def _ip(*args: str) -> str:
    p = subprocess.run([IP, *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip() or p.returncode}")
    return p.stdout


@contextmanager
def party_lan(n: int) -> Iterator[list[Member]]:
    """n namespaces on one private bridge; yields their Members (ns name and IPv4 address)."""
    if not 1 <= n <= MEMBERS_MAX:
        raise ValueError(f"a LAN of 1..{MEMBERS_MAX} members, not {n}")
    prefix = f"mr{os.getpid()}x{next(_calls)}"
    bridge = f"{prefix}br"
    members = [Member(ns=f"{prefix}m{i}", ip=f"{SUBNET}.{i + 2}") for i in range(n)]
    made: list[str] = []
    try:
        _ip("netns", "add", bridge)
        made.append(bridge)
        _ip("-n", bridge, "link", "set", "lo", "up")
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i, m in enumerate(members):
            _ip("netns", "add", m.ns)
            made.append(m.ns)
            _ip("-n", m.ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", bridge)
            _ip("-n", bridge, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", bridge, "link", "set", f"p{i}", "up")
            _ip("-n", m.ns, "addr", "add", f"{m.ip}/24", "dev", "eth0")
            _ip("-n", m.ns, "link", "set", "lo", "up")
            _ip("-n", m.ns, "link", "set", "eth0", "up")
            _ip("-n", m.ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        yield members
    finally:
        _tear_down(made)


def _tear_down(namespaces: list[str]) -> None:
    for ns in namespaces:
        for pid in _pids(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5.0  # killed processes leave a namespace within milliseconds
    while any(_pids(ns) for ns in namespaces) and time.monotonic() < deadline:
        time.sleep(0.05)
    errors = []
    for ns in reversed(namespaces):
        try:
            _ip("netns", "del", ns)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            errors.append(str(exc))
    if errors:
        raise RuntimeError("namespaces left behind: " + "; ".join(errors))


def _pids(ns: str) -> list[int]:
    try:
        return [int(p) for p in _ip("netns", "pids", ns).split()]
    except (RuntimeError, subprocess.TimeoutExpired, ValueError):
        return []


def namespaces_of_this_process() -> list[str]:
    """The namespaces this process made and has not deleted (a test's leak check)."""
    mine = f"mr{os.getpid()}x"
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.startswith(mine)]

"""Before a peer has joined the party, everything it can make us read or hold is bounded.

The multi-process tests start a real peer on 127.0.0.1 and play the outsider with raw sockets
(and, for yamux, py-libp2p's own Noise client): a 2^33 length where multistream-select expects a
protocol line (GHSA-hmjq-g7pp-rw3x), the longest Noise message with a flood behind it, a yamux
frame of 16 MiB; the peer's resident memory (VmRSS) must stay within PREAUTH_RSS_GROWTH_MAX and
each hostile connection must be closed. Idle connections past the per-address limit are refused
with one log line, a member still fetches a scene with 1,000 idle connections open, and under a
256-descriptor limit 300 idle connections leave no traceback in the peer's stderr.

The fast tests drive the sans-IO pieces (the yamux frame guard, the admission table, the accept
error filter) and the bounded multistream reader over trio's in-memory streams.
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import time

import pytest
import trio
import trio.testing
from party import PARTY, SECRET, PeerProc, cli

from meshrender.net import libp2p_fixes as fixes

MULTISTREAM = b"/multistream/1.0.0\n"
PREAUTH_RSS_GROWTH_MAX = 50 << 20  # the target for 8 hostile connections
HOSTILE_CONNECTIONS = 8
FLOOD_BYTES = 64 << 20  # what each hostile client tries to push after its length prefix
ATTACKER_ADDRS = [f"127.0.0.{i}" for i in range(2, 42)]  # loopback sources other than 127.0.0.1


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def line(text: bytes) -> bytes:
    return uvarint(len(text)) + text


def vmrss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def port_of(peer: PeerProc) -> int:
    return int(peer.addr.split("/tcp/")[1].split("/")[0])


# ------------------------------------------------------------------ the outsider's clients


def flood(socks: list[socket.socket], pid: int, budget_bytes: int = FLOOD_BYTES, limit_s: float = 20.0):
    """Push junk into every socket until the peer closes it (or budget_bytes went in), sampling
    the peer's RSS meanwhile. Returns (peak RSS, sockets the peer closed, bytes sent)."""
    junk = b"\xa5" * (1 << 16)
    sent = {s: 0 for s in socks}
    open_ = set(socks)
    closed: set[socket.socket] = set()
    peak = vmrss(pid)
    deadline = time.monotonic() + limit_s
    for s in socks:
        s.setblocking(False)
    while open_ and time.monotonic() < deadline:
        _, writable, _ = select.select(list(open_), list(open_), [], 0.05)
        readable, _, _ = select.select(list(open_), [], [], 0)
        for s in readable:
            try:
                if s.recv(1 << 16) == b"":
                    closed.add(s)
                    open_.discard(s)
            except (ConnectionResetError, BrokenPipeError):
                closed.add(s)
                open_.discard(s)
            except BlockingIOError:
                pass
        for s in writable:
            if s not in open_:
                continue
            if sent[s] >= budget_bytes:
                continue
            try:
                sent[s] += s.send(junk)
            except (ConnectionResetError, BrokenPipeError):
                closed.add(s)
                open_.discard(s)
            except BlockingIOError:
                pass
        peak = max(peak, vmrss(pid))
    for s in socks:
        s.close()
    return peak, closed, sum(sent.values())


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def multistream_bomb(port: int) -> socket.socket:
    """The advisory's client: the multistream header, then a 2^33 length where a line should be."""
    s = connect(port)
    s.sendall(line(MULTISTREAM) + uvarint(1 << 33))
    return s


def noise_bomb(port: int) -> socket.socket:
    """Negotiate /noise, then announce the longest Noise message (65535 bytes) and flood."""
    s = connect(port)
    s.sendall(line(MULTISTREAM) + line(b"/noise\n"))
    s.settimeout(5)
    got = b""
    while got.count(b"\n") < 2:  # the peer's header and its echo of /noise
        piece = s.recv(4096)
        assert piece, "the peer closed before agreeing on /noise"
        got += piece
    s.sendall(struct.pack(">H", 0xFFFF))
    return s


async def _yamux_bomb(
    port: int, peer_id: str, first: bytes, junk: bytes, budget_bytes: int, limit_s: float
) -> str:
    """A real Noise handshake with py-libp2p's own client pieces (a fresh key: any outsider can),
    yamux negotiated, then `first` and `junk` again and again written raw over the secure session
    until the peer closes. Returns how it ended."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.io.trio import TrioTCPStream
    from libp2p.network.connection.raw_connection import RawConnection
    from libp2p.peer.id import ID
    from libp2p.protocol_muxer.multiselect_client import MultiselectClient
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
    from libp2p.security.noise.transport import Transport as Noise

    key = create_new_key_pair()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    raw = RawConnection(TrioTCPStream(stream), True)
    client = MultiselectClient()
    await client.select_one_of(["/noise"], MultiselectCommunicator(raw), 5)
    secure = await Noise(key, noise_privkey=new_x25519().private_key).secure_outbound(
        raw, ID.from_base58(peer_id)
    )
    await client.select_one_of(["/yamux/1.0.0"], MultiselectCommunicator(secure), 5)
    sent, outcome = 0, "still open"
    with trio.move_on_after(limit_s):
        try:
            if first:
                await secure.write(first)
            while sent < budget_bytes:
                await secure.write(junk)
                sent += len(junk)
            while True:  # all sent: wait for the peer's verdict
                if await secure.read(1 << 16) == b"":
                    break
        except Exception as exc:  # the peer closed on us: what we hope for
            outcome = f"closed ({type(exc).__name__})"
        else:
            outcome = "closed"
    with trio.CancelScope(shield=True):
        await stream.aclose()
    return outcome


def yamux_attack(port: int, peer_id: str, pid: int, first: bytes, junk: bytes = b"\xa5" * 60000,
                 n: int = HOSTILE_CONNECTIONS, budget_bytes: int = FLOOD_BYTES,
                 limit_s: float = 20.0):  # fmt: skip
    """n concurrent _yamux_bomb clients; returns (peak RSS of pid meanwhile, outcomes)."""
    peak = vmrss(pid)
    outcomes: list[str] = []

    async def main():
        nonlocal peak

        async def one():
            try:
                outcomes.append(await _yamux_bomb(port, peer_id, first, junk, budget_bytes, limit_s))
            except Exception as exc:  # refused before yamux: also a closed connection
                outcomes.append(f"refused ({type(exc).__name__}: {exc})")

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
            while len(outcomes) < n:
                peak = max(peak, vmrss(pid))
                await trio.sleep(0.05)

    trio.run(main)
    return peak, outcomes


def yamux_header(typ: int, flags: int, stream_id: int, length: int) -> bytes:
    return struct.pack(">BBHII", 0, typ, flags, stream_id, length)


def identify_then_flood() -> tuple[bytes, bytes]:
    """Open yamux stream 1 asking for identify (which answers and never reads again), then keep
    sending DATA frames on it: 0.8.1 only logs that its receive window was overrun."""
    ask = line(MULTISTREAM) + line(b"/ipfs/id/1.0.0\n")
    frame = b"\xa5" * 60000
    return yamux_header(0, 1, 1, len(ask)) + ask, yamux_header(0, 0, 1, len(frame)) + frame


# ------------------------------------------------------------------ fast: the pieces on their own


class _MemRW:
    """A libp2p ReadWriteCloser over one end of a trio memory stream, noting the largest read."""

    def __init__(self, stream):
        self.stream = stream
        self.largest_read = 0

    async def read(self, n=None):
        self.largest_read = max(self.largest_read, n or 0)
        return await self.stream.receive_some(min(n or 65536, 65536))

    async def write(self, data):
        await self.stream.send_all(data)

    async def close(self):
        await self.stream.aclose()


async def _negotiate_against(multiselect, sent: bytes):
    client, server = trio.testing.memory_stream_pair()
    rw = _MemRW(server)
    await client.send_all(sent)
    with trio.move_on_after(0.5):  # the library's own listener waits for its 2^33 bytes
        try:
            await multiselect.negotiate(_plain(rw), 5)  # BoundedMultiselect wraps it itself
        except Exception as exc:  # what a hostile line should end in
            return exc, rw.largest_read
    return None, rw.largest_read


def _plain(rw):
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

    return MultiselectCommunicator(rw)


def test_multistream_length_is_checked_before_the_body_is_read():
    """GHSA-hmjq-g7pp-rw3x: 0.8.1 asks its reader for all 2^33 bytes a hostile length names; ours
    refuses the line after reading its varint, asking for nothing larger than a line may be."""
    from libp2p.protocol_muxer.exceptions import MultiselectError
    from libp2p.protocol_muxer.multiselect import Multiselect

    bomb = line(MULTISTREAM) + uvarint(1 << 33) + b"\xa5" * 4096
    exc, largest = trio.run(_negotiate_against, fixes.BoundedMultiselect({"/x/1": None}), bomb)
    assert isinstance(exc, MultiselectError) and "8589934592" in str(exc)
    assert largest <= fixes.MULTISELECT_LINE_BYTES_MAX
    # the library's own listener still trusts the length (drop the fix once this fails)
    _, largest = trio.run(
        _negotiate_against, Multiselect({"/x/1": None}), line(MULTISTREAM) + uvarint(1 << 33)
    )
    assert largest == 1 << 33


def test_multistream_listener_takes_a_bounded_number_of_proposals():
    from libp2p.protocol_muxer.exceptions import MultiselectError

    proposals = b"".join(line(f"/nope/{i}\n".encode()) for i in range(100))
    exc, _ = trio.run(
        _negotiate_against, fixes.BoundedMultiselect({"/x/1": None}), line(MULTISTREAM) + proposals
    )
    assert isinstance(exc, MultiselectError) and "proposals" in str(exc)


def test_yamux_guard_sees_every_header_however_the_bytes_are_cut():
    import random

    frames = [
        yamux_header(0, 1, 1, 5) + b"hello",  # DATA + SYN with a body
        yamux_header(1, 0, 1, 300000),  # a window update: its length is a delta, not a body
        yamux_header(2, 0, 0, 7),  # ping
        yamux_header(0, 0, 3, 0),  # empty DATA
        yamux_header(0, 4, 1, 3) + b"bye",  # DATA + FIN
    ]
    wire = b"".join(frames)
    rnd = random.Random(7)
    for _ in range(50):
        seen = []
        guard = fixes.YamuxInboundGuard(lambda *h, seen=seen: seen.append(h))
        i = 0
        while i < len(wire):
            j = min(len(wire), i + rnd.randint(1, 9))
            guard.feed(wire[i:j])
            i = j
        assert seen == [(0, 1, 1, 5), (1, 0, 1, 300000), (2, 0, 0, 7), (0, 0, 3, 0), (0, 4, 1, 3)]


def test_yamux_guard_refusal_stops_the_frame():
    def check(typ, flags, sid, length):
        if length > fixes.YAMUX_FRAME_BYTES_MAX:
            raise fixes.PreauthLimitError("too long")

    guard = fixes.YamuxInboundGuard(check)
    guard.feed(yamux_header(0, 1, 1, 10) + b"0123456789")
    with pytest.raises(fixes.PreauthLimitError):
        guard.feed(yamux_header(0, 0, 1, 16 << 20)[:12])


def test_admission_refuses_one_address_past_its_limit_and_says_so_once():
    table = fixes.AdmissionTable(lambda p: False, per_addr_max=3, total_max=100)
    tokens = [table.admit("10.0.0.9", now=0.0) for _ in range(3)]
    assert all(t.token is not None and t.notice is None for t in tokens)
    refused = [table.admit("10.0.0.9", now=1.0 + i) for i in range(5)]
    assert all(r.token is None for r in refused)
    assert [r.notice is not None for r in refused] == [True, False, False, False, False]
    assert "10.0.0.9" in refused[0].notice and "limit 3" in refused[0].notice
    assert table.admit("10.0.0.10", now=2.0).token is not None  # another address is not held back
    table.release(tokens[0].token)
    assert table.admit("10.0.0.9", now=3.0).token is not None  # room again once one closed
    assert table.admit("10.0.0.9", now=fixes.NOTICE_INTERVAL_S + 10).notice is not None  # said again, later


def test_admission_makes_room_by_closing_the_oldest_and_members_do_not_count():
    members: set[str] = set()
    table = fixes.AdmissionTable(members.__contains__, per_addr_max=100, total_max=4)
    closed: list[int] = []
    first = [table.admit(f"10.0.0.{i}", now=0.0).token for i in range(4)]
    for t in first:
        table.attach(t, lambda t=t: closed.append(t))
    table.identified(first[1], "member-peer")
    members.add("member-peer")
    a = table.admit("10.0.0.50", now=1.0)  # 3 waiting + 1 member: room without closing anyone
    assert a.token is not None and a.evicted == () and closed == []
    b = table.admit("10.0.0.51", now=2.0)  # 4 waiting: the oldest waiting one gives way
    assert b.evicted == (first[0],) and b.notice is not None
    for t in b.evicted:
        table.evict(t)
    assert closed == [first[0]]
    c = table.admit("10.0.0.52", now=3.0)
    assert c.evicted == (first[2],) and c.notice is None  # said once per interval


def test_fd_limited_total_keeps_room_for_the_store():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    total = fixes.fd_limited_total()
    assert total <= fixes.PENDING_TOTAL_MAX
    assert 2 * total + fixes.FD_RESERVE <= max(soft, 2 * 8 + fixes.FD_RESERVE)


def test_identify_and_ls_show_an_outsider_only_the_open_protocols(tmp_path):
    """Two real hosts in one process: until B is a member of A, identify and `ls` name only the
    party protocol, gossip and identify, and B cannot even negotiate A's other protocols."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.host.exceptions import StreamFailure
    from libp2p.identity.identify.identify import ID as IDENTIFY
    from libp2p.identity.identify.identify import parse_identify_response
    from libp2p.network.stream.exceptions import StreamEOF
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from meshrender.net.host import build_host, open_stream, parse_multiaddr

    members: set[str] = set()
    party, chunks = "/meshrender/party/1", "/meshrender/chunks/1"

    async def echo(stream):
        await stream.write(await stream.read(5))
        await stream.close()

    async def identify_protocols(host, peer, nursery):
        stream = await open_stream(host, nursery, peer, str(IDENTIFY))
        data = b""
        with trio.fail_after(5):
            try:
                while piece := await stream.read():
                    data += piece
            except StreamEOF:  # the whole answer is in
                pass
        return set(parse_identify_response(data).protocols)

    async def main():
        a = build_host(create_new_key_pair(), is_member=members.__contains__, open_protocols=[party])
        b = build_host(create_new_key_pair())
        for h in (a, b):
            h.set_stream_handler(party, echo)
            h.set_stream_handler(chunks, echo)
        async with (
            a.run([parse_multiaddr("/ip4/127.0.0.1/tcp/0")]),
            b.run([parse_multiaddr("/ip4/127.0.0.1/tcp/0")]),
        ):
            async with trio.open_nursery() as nursery:
                addr = f"{a.get_addrs()[0]}"
                addr = addr if "/p2p/" in addr else f"{addr}/p2p/{a.get_id()}"
                await b.connect(info_from_p2p_addr(parse_multiaddr(addr)))
                outsider = await identify_protocols(b, a.get_id(), nursery)
                with trio.fail_after(5):
                    listed = set(await b.send_command(a.get_id(), "ls"))
                with pytest.raises(StreamFailure):  # 'na': not offered to an outsider
                    await open_stream(b, nursery, a.get_id(), chunks)
                s = await open_stream(b, nursery, a.get_id(), party)  # the party handshake is open
                await s.write(b"hello")
                assert await s.read(5) == b"hello"
                members.add(str(b.get_id()))
                member = await identify_protocols(b, a.get_id(), nursery)
                s = await open_stream(b, nursery, a.get_id(), chunks)
                await s.write(b"chunk")
                assert await s.read(5) == b"chunk"
                nursery.cancel_scope.cancel()
        return outsider, listed, member

    outsider, listed, member = trio.run(main)
    assert party in outsider and chunks not in outsider and "/ipfs/ping/1.0.0" not in outsider
    assert chunks not in listed and party in listed
    assert {party, chunks, "/ipfs/ping/1.0.0"} <= member


@pytest.mark.slow
def test_outsiders_that_came_and_went_leave_room_for_a_member():
    """0.8.1's inbound handler keeps one of its 250 slots per connection until the whole swarm
    stops: after 250 outsiders had completed Noise + yamux and left, no one could connect again."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from meshrender.net.host import build_host, open_stream, parse_multiaddr

    party = "/meshrender/party/1"

    async def echo(stream):
        await stream.write(await stream.read(5))
        await stream.close()

    async def main():
        a = build_host(create_new_key_pair(), open_protocols=[party])
        a.set_stream_handler(party, echo)
        async with a.run([parse_multiaddr("/ip4/127.0.0.1/tcp/0")]):
            port = int(str(a.get_addrs()[0]).split("/tcp/")[1].split("/")[0])
            for _ in range(260):  # one after another: each is gone before the next comes
                with trio.fail_after(10):
                    await _yamux_bomb(port, str(a.get_id()), b"", b"", 0, 0.01)
            b = build_host(create_new_key_pair())
            async with b.run([parse_multiaddr("/ip4/127.0.0.1/tcp/0")]), trio.open_nursery() as nursery:
                with trio.fail_after(10):
                    await b.connect(
                        info_from_p2p_addr(parse_multiaddr(f"/ip4/127.0.0.1/tcp/{port}/p2p/{a.get_id()}"))
                    )
                    s = await open_stream(b, nursery, a.get_id(), party)
                    await s.write(b"hello")
                    assert await s.read(5) == b"hello"
                nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.slow
def test_descriptor_exhaustion_is_one_line_not_a_traceback_flood(tmp_path):
    """trio's accept loop, out of descriptors, logs a traceback every 100 ms; with the filter it
    says so once and keeps serving."""
    script = tmp_path / "listen.py"
    script.write_text(
        "import logging, resource, sys, trio\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')\n"
        "from meshrender.net.libp2p_fixes import install_accept_error_filter\n"
        "install_accept_error_filter()\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))\n"
        "held = []\n"
        "async def handler(stream):\n"
        "    held.append(stream)\n"
        "    await trio.sleep_forever()\n"
        "async def main():\n"
        "    listeners = await trio.open_tcp_listeners(0, host='127.0.0.1')\n"
        "    print(listeners[0].socket.getsockname()[1], flush=True)\n"
        "    with trio.move_on_after(float(sys.argv[1])):\n"
        "        await trio.serve_listeners(handler, listeners)\n"
        "    print('served', len(held), flush=True)\n"
        "trio.run(main)\n"
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(script), "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    port = int(proc.stdout.readline())
    socks = [connect(port) for _ in range(80)]
    out, err = proc.communicate(timeout=30)
    for s in socks:
        s.close()
    assert "Traceback" not in err, err[-2000:]
    emfile = [row for row in err.splitlines() if "EMFILE" in row]
    assert len(emfile) == 1 and "cannot accept connections" in emfile[0], err[-2000:]
    assert "served" in out  # the listener was still running when its time was up


# ------------------------------------------------------------------ slow: a real peer under attack


def _raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"needs {want} descriptors; this machine's hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


PEER_WITH_FDS = """
import resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard if want > 1024 else want))
from meshrender.cli import main
sys.exit(main(["peer", "--headless", "--json", *sys.argv[1:]]))
"""


def start_peer(home, fds: int = 0) -> PeerProc:
    if fds:
        return PeerProc(home, script=PEER_WITH_FDS.replace("sys.argv.pop(1)", str(fds)))
    return PeerProc(home)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """One peer the attack tests share (each attack leaves it as it found it)."""
    peer = start_peer(tmp_path_factory.mktemp("target"))
    time.sleep(2)  # let its start-up allocations settle before measuring growth
    yield peer
    peer.stop()


def _assert_bounded(peer: PeerProc, before: int, peak: int, what: str) -> None:
    assert peer.alive(), peer.proc.stderr.read()[-2000:]
    assert peak - before <= PREAUTH_RSS_GROWTH_MAX, f"{what}: RSS {before >> 20} -> {peak >> 20} MiB"


@pytest.mark.slow
def test_multistream_bombs_leave_memory_alone(target):
    before = vmrss(target.proc.pid)
    socks = [multistream_bomb(port_of(target)) for _ in range(HOSTILE_CONNECTIONS)]
    peak, closed, _ = flood(socks, target.proc.pid)
    _assert_bounded(target, before, peak, "2^33 multistream lengths")
    assert len(closed) == HOSTILE_CONNECTIONS  # every one was hung up on


@pytest.mark.slow
def test_longest_noise_messages_leave_memory_alone(target):
    before = vmrss(target.proc.pid)
    socks = [noise_bomb(port_of(target)) for _ in range(HOSTILE_CONNECTIONS)]
    peak, closed, _ = flood(socks, target.proc.pid)
    _assert_bounded(target, before, peak, "65535-byte Noise messages")
    assert len(closed) == HOSTILE_CONNECTIONS


@pytest.mark.slow
def test_yamux_frame_of_16_mib_after_noise_is_refused(target):
    before = vmrss(target.proc.pid)
    peak, outcomes = yamux_attack(
        port_of(target), target.peer_id, target.proc.pid, yamux_header(0, 1, 1, 16 << 20)
    )
    _assert_bounded(target, before, peak, "16 MiB yamux frames")
    assert all(o.startswith(("closed", "refused")) for o in outcomes), outcomes


@pytest.mark.slow
def test_unread_stream_overrun_after_noise_is_refused(target):
    """Identify answers and never reads again; 0.8.1 keeps buffering whatever comes after."""
    before = vmrss(target.proc.pid)
    first, junk = identify_then_flood()
    peak, outcomes = yamux_attack(port_of(target), target.peer_id, target.proc.pid, first, junk)
    _assert_bounded(target, before, peak, "an overrun stream window")
    assert all(o.startswith(("closed", "refused")) for o in outcomes), outcomes


@pytest.mark.slow
def test_idle_connections_past_the_per_address_limit_are_refused_and_logged_once(target):
    n = fixes.PENDING_PER_IP_MAX + 10
    socks = [connect(port_of(target), "127.0.0.2") for _ in range(n)]
    time.sleep(1.5)
    readable, _, _ = select.select(socks, [], [], 0.5)
    hung_up = sum(1 for s in readable if s.recv(16) == b"")
    for s in socks:
        s.close()
    assert hung_up == n - fixes.PENDING_PER_IP_MAX
    target.stop()  # the shared peer's last test: its stderr is complete once it has stopped
    notices = [row for row in target.proc.stderr.read().splitlines() if "refusing connections from" in row]
    assert len(notices) == 1 and "127.0.0.2" in notices[0], notices


def _tiny_scene(path) -> str:
    rows = [f"v {i % 7} {i % 5} {i % 3 + i * 1e-3}" for i in range(3000)]
    rows += [f"f {i + 1} {i + 2} {i + 3}" for i in range(0, 2997, 3)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.mark.slow
def test_member_fetches_while_1000_idle_connections_are_open(tmp_path):
    _raise_fd_limit(4096)
    p = cli("store", "add", _tiny_scene(tmp_path / "tiny.obj"), "--json", home=tmp_path / "a")
    assert p.returncode == 0, p.stderr
    scene = json.loads(p.stdout)["scene_id"]
    a = start_peer(tmp_path / "a", fds=4096)
    try:
        socks = [connect(port_of(a), ATTACKER_ADDRS[i % len(ATTACKER_ADDRS)]) for i in range(1000)]
        args = [
            "store",
            "fetch",
            scene,
            "--party",
            PARTY,
            "--secret",
            SECRET,
            "--json",
            "--bootstrap",
            a.addr,
        ]
        f = cli(*args, home=tmp_path / "d", timeout=60)
        for s in socks:
            s.close()
        assert f.returncode == 0, f.stderr[-2000:]
        assert json.loads(f.stdout)["fetched_chunks"] >= 1
        assert a.alive()
    finally:
        a.stop()
    assert "Traceback" not in a.proc.stderr.read()


@pytest.mark.slow
def test_300_idle_connections_under_256_descriptors_leave_no_traceback(tmp_path):
    a = start_peer(tmp_path / "a", fds=256)
    try:
        socks = [connect(port_of(a), ATTACKER_ADDRS[i % len(ATTACKER_ADDRS)]) for i in range(300)]
        time.sleep(2)
        open_fds = len(os.listdir(f"/proc/{a.proc.pid}/fd"))
        for s in socks:
            s.close()
        assert a.alive()
    finally:
        a.stop()
    err = a.proc.stderr.read()
    assert "Traceback" not in err, err[-3000:]
    assert sum("EMFILE" in row for row in err.splitlines()) <= 1
    assert open_fds < 256 - fixes.FD_RESERVE // 2  # room was kept for the store and the database

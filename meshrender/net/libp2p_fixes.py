"""Bounds on everything py-libp2p 0.8.1 reads before a peer has joined the party.

How it works: nothing here patches the library's globals. `meshrender.net.host.build_host` swaps
these subclasses and wrappers into the one host it builds (instance attributes, at construction):

  * multistream-select (security, muxer and per-stream negotiation, both roles) reads each line
    through `BoundedCommunicator`: the varint length is checked against MULTISELECT_LINE_BYTES_MAX
    before a byte of the body is read. 0.8.1's `read_delim` trusts the length, so a raw TCP client
    that sends the multistream header and a length of 2^33 had the peer buffer ~185 MB per
    connection (advisory GHSA-hmjq-g7pp-rw3x, fixed upstream in 0.8.2, which the registry lacks);
    after Noise the same read loops until it has all 2^33 bytes. A listener also takes at most
    MULTISELECT_PROPOSALS_MAX proposals and offers only what `offered` lets it (outsiders are not
    told our protocols by `ls`).
  * yamux frames pass through `YamuxInboundGuard` (sans-IO) before yamux sees them: a DATA frame
    over YAMUX_FRAME_BYTES_MAX, more unread bytes on a stream than its window, and (before the
    party handshake) more streams or unread bytes than a joining peer needs close the connection.
    0.8.1 accepts 16 MiB frames and only logs when a peer overruns the receive window, so a
    stream nobody reads could grow without end.
  * inbound connections pass `AdmissionTable` (sans-IO): at most PENDING_PER_IP_MAX connections
    that have not joined per source address, and at most PENDING_TOTAL_MAX in all, the oldest
    giving way to a new one (so a flood cannot keep a member out); each offender is logged once.
    The handler also waits for *its* connection to end: 0.8.1's waits for the whole swarm to stop,
    so every inbound connection ever accepted kept one of its 250 inbound slots for good.
  * trio's accept loop logs EMFILE/ENFILE with a traceback every 100 ms; `AcceptErrorFilter`
    turns that into one line per ACCEPT_ERROR_LOG_INTERVAL_S.

Noise needs no wrapper: its messages carry a 2-byte length (at most 65535 bytes each).
"""

from __future__ import annotations

import errno
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IOException
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.protocol_muxer.exceptions import MultiselectCommunicatorError, MultiselectError
from libp2p.protocol_muxer.multiselect import DEFAULT_NEGOTIATE_TIMEOUT, PROTOCOL_NOT_FOUND_MSG, Multiselect
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import Yamux

log = logging.getLogger("meshrender.net")

MULTISELECT_LINE_BYTES_MAX = 1024  # go-multistream's cap on one line; our longest protocol id is ~30
MULTISELECT_PROPOSALS_MAX = 16  # a peer that knows what it wants names it in one or two tries
VARINT_BYTES_MAX = 10  # a 64-bit varint

YAMUX_HEADER = struct.Struct(">BBHII")  # version, type, flags, stream id, length
YAMUX_TYPE_DATA = 0
YAMUX_FLAG_SYN = 1
YAMUX_FRAME_BYTES_MAX = 256 * 1024  # py-libp2p writes frames of < 64 KiB; 256 KiB is a fresh window
STREAM_UNREAD_BYTES_MAX = 16 * 1024 * 1024  # yamux's largest receive window: more is an overrun
PREAUTH_STREAM_UNREAD_BYTES_MAX = 256 * 1024  # a stream's first window, before the party handshake
PREAUTH_CONN_UNREAD_BYTES_MAX = 512 * 1024  # all streams of a connection that has not joined
PREAUTH_STREAMS_MAX = 16  # a joining peer opens party, gossip and identify streams: a handful

PENDING_PER_IP_MAX = 32  # connections not yet joined from one address (a LAN host runs a few peers)
PENDING_TOTAL_MAX = 512  # all connections not yet joined; the oldest gives way beyond it
FD_RESERVE = 64  # descriptors kept for the store, the job database, logs and outbound dials
NOTICE_INTERVAL_S = 600.0  # an offender is named in the log at most this often
NOTICE_ADDRS_MAX = 4096  # addresses remembered for that; forgotten wholesale beyond
ACCEPT_ERROR_LOG_INTERVAL_S = 60.0  # one line about running out of descriptors per this


class NoticeBook:
    """Whether a line about `key` is due: the first time, then once per NOTICE_INTERVAL_S."""

    def __init__(self, interval_s: float = NOTICE_INTERVAL_S):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def first(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        if len(self._last) >= NOTICE_ADDRS_MAX:
            self._last.clear()
        self._last[key] = now
        return True


_REFUSALS = NoticeBook()  # yamux limit breakers, by source address, across all connections


class PreauthLimitError(IOException):
    """A peer that has not joined (or a member, for the hard limits) sent more than allowed.

    An IOException so that py-libp2p's readers treat it as a broken connection and close it."""


# ---------------------------------------------------------------- multistream-select


class BoundedCommunicator(MultiselectCommunicator):
    """A multistream-select line reader whose length prefix is checked before the body is read:
    GHSA-hmjq-g7pp-rw3x (py-libp2p < 0.8.2 buffers whatever length a peer announces)."""

    async def read(self) -> str:
        try:
            length = await _read_uvarint(self.read_writer)
            if length == 0 or length > MULTISELECT_LINE_BYTES_MAX:
                raise MultiselectCommunicatorError(
                    f"multistream line of {length} bytes (limit {MULTISELECT_LINE_BYTES_MAX})"
                )
            body = await _read_exactly(self.read_writer, length)
        except IOException as exc:
            raise MultiselectCommunicatorError(f"fail to read from multiselect communicator: {exc}") from None
        if body[-1:] != b"\n":
            raise MultiselectCommunicatorError("multistream line without its newline")
        try:
            return body[:-1].decode()
        except UnicodeDecodeError:
            raise MultiselectCommunicatorError("multistream line is not UTF-8") from None


async def _read_exactly(reader, n: int) -> bytes:
    """n bytes (n is already bounded by the caller), or IOException at an early end."""
    buf = bytearray()
    while len(buf) < n:
        piece = await reader.read(n - len(buf))
        if not piece:
            raise IOException(f"connection ended after {len(buf)} of {n} bytes")
        buf += piece
    return bytes(buf)


async def _read_uvarint(reader) -> int:
    value = 0
    for i in range(VARINT_BYTES_MAX):
        byte = (await _read_exactly(reader, 1))[0]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value
    raise IOException("varint longer than 10 bytes")


def bounded(communicator) -> BoundedCommunicator:
    if isinstance(communicator, BoundedCommunicator):
        return communicator
    return BoundedCommunicator(communicator.read_writer)


Offered = Callable[[object, dict], dict]  # (read_writer, all handlers) -> the handlers this peer may pick


class BoundedMultiselect(Multiselect):
    """The listener side: bounded lines, at most MULTISELECT_PROPOSALS_MAX proposals, and only the
    protocols `offered` returns for this connection or stream (answered 'na' otherwise, `ls`
    lists only those)."""

    def __init__(self, handlers: dict | None = None, offered: Offered | None = None) -> None:
        super().__init__(dict(handlers or {}))
        self.offered = offered

    async def negotiate(self, communicator, negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT):
        comm = bounded(communicator)
        handlers = self.handlers if self.offered is None else self.offered(comm.read_writer, self.handlers)
        try:
            with trio.fail_after(negotiate_timeout):
                await self.handshake(comm)
                for _ in range(MULTISELECT_PROPOSALS_MAX):
                    try:
                        command = await comm.read()
                        if command == "ls":
                            await comm.write("\n".join(str(p) for p in handlers if p is not None) + "\n")
                            continue
                        protocol = TProtocol(command) if command else None
                        if protocol is not None and protocol in handlers:
                            await comm.write(command)
                            return protocol, handlers[protocol]
                        await comm.write(PROTOCOL_NOT_FOUND_MSG)
                    except MultiselectCommunicatorError as exc:
                        raise MultiselectError(str(exc)) from None
                raise MultiselectError(f"no protocol agreed in {MULTISELECT_PROPOSALS_MAX} proposals")
        except trio.TooSlowError:
            raise MultiselectError("handshake read timeout") from None


class BoundedMultiselectClient(MultiselectClient):
    """The dialer side: the same bounded line reader (an impostor we dial is just as hostile)."""

    async def select_one_of(
        self, protocols, communicator, negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT
    ):
        return await super().select_one_of(protocols, bounded(communicator), negotiate_timeout)

    async def query_multistream_command(
        self, communicator, command: str, response_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT
    ):
        return await super().query_multistream_command(bounded(communicator), command, response_timeout)


def bound_selector(selector) -> None:
    """Give a GenericMultistreamSelector (security or muxer) the bounded listener and dialer."""
    if not isinstance(selector.multiselect, BoundedMultiselect):
        selector.multiselect = BoundedMultiselect(selector.multiselect.handlers)
    if not isinstance(selector.multiselect_client, BoundedMultiselectClient):
        selector.multiselect_client = BoundedMultiselectClient()


# ---------------------------------------------------------------- yamux


class YamuxInboundGuard:
    """Follows the frame boundaries of yamux's inbound byte stream and asks `check` about each
    header before yamux reads the frame's body. Sans-IO: bytes in, PreauthLimitError out."""

    def __init__(self, check: Callable[[int, int, int, int], None]):
        self._check = check  # (type, flags, stream id, length) -> None or raise
        self._header = bytearray()
        self._body_left = 0

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._body_left:
                take = min(self._body_left, n - i)
                self._body_left -= take
                i += take
                continue
            piece = data[i : i + YAMUX_HEADER.size - len(self._header)]
            self._header += piece
            i += len(piece)
            if len(self._header) == YAMUX_HEADER.size:
                _version, typ, flags, stream_id, length = YAMUX_HEADER.unpack(self._header)
                self._header.clear()
                self._check(typ, flags, stream_id, length)
                if typ == YAMUX_TYPE_DATA:
                    self._body_left = length


class _GuardedConn:
    """The secured connection as yamux sees it: reads pass through a YamuxInboundGuard."""

    def __init__(self, conn, guard: YamuxInboundGuard):
        self._conn = conn
        self._guard = guard

    async def read(self, n: int | None = None) -> bytes:
        data = await self._conn.read(n)
        self._guard.feed(data)
        return data

    def __getattr__(self, name):  # write, close, addresses, is_initiator, ...
        return getattr(self._conn, name)


IsMember = Callable[[str], bool]


def bounded_yamux(is_member: IsMember) -> type[Yamux]:
    """A Yamux whose inbound frames are checked against the limits above; `is_member(peer_id)`
    lifts the limits meant for peers that have not joined."""

    class BoundedYamux(Yamux):
        def __init__(self, secured_conn, peer_id, is_initiator=None, on_close=None) -> None:
            super().__init__(secured_conn, peer_id, is_initiator=is_initiator, on_close=on_close)
            self.secured_conn = _GuardedConn(secured_conn, YamuxInboundGuard(self._check_frame))

        def _check_frame(self, typ: int, flags: int, stream_id: int, length: int) -> None:
            member = is_member(str(self.peer_id))
            if typ == YAMUX_TYPE_DATA:
                if length > YAMUX_FRAME_BYTES_MAX:
                    self._refuse(f"a yamux frame of {length} bytes (limit {YAMUX_FRAME_BYTES_MAX})")
                unread = len(self.stream_buffers.get(stream_id, b""))
                limit = STREAM_UNREAD_BYTES_MAX if member else PREAUTH_STREAM_UNREAD_BYTES_MAX
                if unread + length > limit:
                    self._refuse(
                        f"{unread + length} unread bytes on yamux stream {stream_id} (limit {limit})"
                    )
                if not member:
                    total = sum(len(b) for b in self.stream_buffers.values()) + length
                    if total > PREAUTH_CONN_UNREAD_BYTES_MAX:
                        self._refuse(
                            f"{total} unread bytes before joining (limit {PREAUTH_CONN_UNREAD_BYTES_MAX})"
                        )
            if flags & YAMUX_FLAG_SYN and not member and stream_id not in self.streams:
                theirs = sum(1 for s in self.streams if (s % 2 == 1) != self.is_initiator_value)
                if theirs >= PREAUTH_STREAMS_MAX:
                    self._refuse(f"more than {PREAUTH_STREAMS_MAX} streams before joining")

        def _refuse(self, what: str) -> None:
            try:
                addr = self.secured_conn.get_remote_address()[0]
            except Exception:  # an odd transport: one name for all of them
                addr = "?"
            if _REFUSALS.first(addr, time.monotonic()):
                log.warning("closing connections from %s that break yamux's limits (first: %s, peer %s)",
                            addr, what, self.peer_id)  # fmt: skip
            raise PreauthLimitError(what)

    return BoundedYamux


class BoundedMuxerMultistream(MuxerMultistream):
    """0.8.1's MuxerMultistream builds a plain `Yamux` whatever class it was given; this one
    builds the class registered for the negotiated protocol, and negotiates with bounded lines."""

    def __init__(self, transports, negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT) -> None:
        super().__init__(transports, negotiate_timeout)
        bound_selector(self._selector)

    async def new_conn(self, conn, peer_id):
        protocol, transport_class = await self._selector.select(
            conn, conn.is_initiator, self.negotiate_timeout
        )
        muxed = transport_class(conn, peer_id, is_initiator=conn.is_initiator)
        return self._annotate_connection(muxed, conn, protocol)


# ---------------------------------------------------------------- inbound admission


@dataclass
class _Pending:
    addr: str
    peer: str | None = None  # known once Noise is done
    evict: Callable[[], None] | None = None


@dataclass(frozen=True)
class Admission:
    token: int | None  # None: refuse this connection
    evicted: tuple[int, ...] = ()  # older connections to close to make room
    notice: str | None = None  # a line for the log (at most once per offender and interval)


@dataclass
class AdmissionTable:
    """Which inbound connections may stay while they have not joined the party. Sans-IO: the
    caller passes the clock and acts on the answer (refuse, or close the evicted ones)."""

    is_member: IsMember
    per_addr_max: int = PENDING_PER_IP_MAX
    total_max: int = PENDING_TOTAL_MAX
    conns: OrderedDict[int, _Pending] = field(default_factory=OrderedDict)  # oldest first
    _next: int = 0
    _noticed: NoticeBook = field(default_factory=NoticeBook)

    def _waiting(self) -> list[int]:
        return [t for t, c in self.conns.items() if c.peer is None or not self.is_member(c.peer)]

    def admit(self, addr: str, now: float) -> Admission:
        waiting = self._waiting()
        here = sum(1 for t in waiting if self.conns[t].addr == addr)
        if here >= self.per_addr_max:
            notice = self._notice(
                addr, now, f"refusing connections from {addr}: {here} of its connections have not joined "
                f"the party (limit {self.per_addr_max} per address)",
            )  # fmt: skip
            return Admission(None, (), notice)
        evicted: tuple[int, ...] = ()
        notice = None
        if len(waiting) >= self.total_max:
            evicted = tuple(waiting[: len(waiting) - self.total_max + 1])
            notice = self._notice(
                "*", now, f"{len(waiting)} inbound connections have not joined the party (limit "
                f"{self.total_max}): closing the oldest to admit new ones",
            )  # fmt: skip
        self._next += 1
        self.conns[self._next] = _Pending(addr)
        return Admission(self._next, evicted, notice)

    def _notice(self, key: str, now: float, line: str) -> str | None:
        return line if self._noticed.first(key, now) else None

    def attach(self, token: int, evict: Callable[[], None]) -> None:
        if token in self.conns:
            self.conns[token].evict = evict

    def identified(self, token: int, peer: str) -> None:
        if token in self.conns:
            self.conns[token].peer = peer

    def evict(self, token: int) -> None:
        c = self.conns.pop(token, None)
        if c is not None and c.evict is not None:
            c.evict()

    def release(self, token: int) -> None:
        self.conns.pop(token, None)


def fd_limited_total(total_max: int = PENDING_TOTAL_MAX) -> int:
    """PENDING_TOTAL_MAX, or less where the descriptor limit would run out before it."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # not on this platform: keep the constant
        return total_max
    if soft == resource.RLIM_INFINITY:
        return total_max
    return max(8, min(total_max, (soft - FD_RESERVE) // 2))


def install_admission(swarm, table: AdmissionTable) -> None:
    """Route the swarm's inbound TCP connections through `table` (an instance attribute: the
    listener's handler looks `_handle_inbound_connection` up on each connection)."""

    async def handle_inbound(read_write_closer, maddr) -> None:
        try:
            remote = read_write_closer.get_remote_address()
        except Exception:  # an odd transport: count it under one name
            remote = None
        addr = remote[0] if remote else "?"
        decision = table.admit(addr, time.monotonic())
        if decision.notice:
            log.warning("%s", decision.notice)
        for token in decision.evicted:
            table.evict(token)
        if decision.token is None:
            await _quiet_close(read_write_closer)
            return
        token, muxed = decision.token, None
        try:
            # evicted: the socket is closed under the upgrade (not cancelled: 0.8.1's upgrade
            # cleanup is not cancel-safe and would keep its resource-manager slot for good)
            table.attach(token, lambda: _close_now(read_write_closer))
            raw = RawConnection(read_write_closer, False)
            muxed = await swarm.upgrade_inbound_raw_conn(raw, maddr)  # under inbound_upgrade_timeout
            table.identified(token, str(muxed.peer_id))
            closed = getattr(muxed, "event_closed", None)
            if closed is not None:
                await closed.wait()
            else:  # a muxer without the event: hold the socket as long as the swarm runs
                await swarm.manager.wait_finished()
        except Exception as exc:  # the peer's failure to upgrade, in any of libp2p's many kinds
            log.debug("inbound connection from %s ended: %s: %s", addr, type(exc).__name__, exc)
        finally:
            table.release(token)
            if muxed is not None and not muxed.is_closed:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await muxed.close()
                    except Exception:  # already broken
                        pass
            await _quiet_close(read_write_closer)

    swarm._handle_inbound_connection = handle_inbound


def _close_now(read_write_closer) -> None:
    """Close a TrioTCPStream's socket without waiting: trio wakes its reader, whose read ends."""
    sock = getattr(getattr(read_write_closer, "stream", None), "socket", None)
    if sock is not None:
        sock.close()


async def _quiet_close(resource) -> None:
    with trio.CancelScope(shield=True):
        try:
            await resource.close()
        except Exception:  # already closed or broken
            pass


# ---------------------------------------------------------------- accept errors


class AcceptErrorFilter(logging.Filter):
    """On trio's 'trio.serve_listeners' logger: accept() failing for want of descriptors becomes
    one line without a traceback, at most once per ACCEPT_ERROR_LOG_INTERVAL_S (trio retries every
    100 ms on its own, so members already connected keep being served)."""

    CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not (isinstance(exc, OSError) and exc.errno in self.CAPACITY_ERRNOS):
            return True
        now = self._clock()
        if self._last is not None and now - self._last < ACCEPT_ERROR_LOG_INTERVAL_S:
            self.suppressed += 1
            return False
        self._last = now
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        record.msg = "cannot accept connections: %s (%s); retrying every 0.1 s, members stay connected%s"
        record.args = (
            name,
            exc.strerror,
            f" ({self.suppressed} more since the last line)" if self.suppressed else "",
        )
        record.exc_info = None
        record.exc_text = None
        self.suppressed = 0
        return True


def install_accept_error_filter() -> AcceptErrorFilter:
    """Once per process: later calls return the filter already installed."""
    logger = logging.getLogger("trio.serve_listeners")
    for f in logger.filters:
        if isinstance(f, AcceptErrorFilter):
            return f
    f = AcceptErrorFilter()
    logger.addFilter(f)
    return f


__all__ = [
    "AcceptErrorFilter",
    "AdmissionTable",
    "BoundedCommunicator",
    "BoundedMultiselect",
    "BoundedMultiselectClient",
    "BoundedMuxerMultistream",
    "PreauthLimitError",
    "YamuxInboundGuard",
    "bound_selector",
    "bounded_yamux",
    "fd_limited_total",
    "install_accept_error_filter",
    "install_admission",
]

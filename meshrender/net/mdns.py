"""LAN discovery by mDNS / DNS-SD: peers of one party find each other without a bootstrap address.

Records. Each peer registers one DNS-SD service of type SERVICE_TYPE. Its instance label is
`<peer id>-<first TAG_PREFIX_CHARS of the party tag>`, so a browser skips other parties' services
by name alone, without resolving them, and one identity can sit in two parties on one LAN. The TXT
record carries the format version, the full party tag (public: a hash of the party name), the peer
id and up to ADDRS_MAX multiaddrs `/ip4/A/tcp/P/p2p/<peer id>`. SRV and A records are there because
DNS-SD needs them; nobody dials them.

Timing. zeroconf's ServiceBrowser asks at start (about 0.1, 1, 5 and 14 s) and again before records
expire; a registration probes (about 1.2 s), then announces three times. A late joiner hears the
earlier peers answer its first query (measured: 0.1 s), and they hear its announcement (1.1 s);
peers started together know each other once they have announced (1.2 s). Records live
ANNOUNCE_TTL_S, so a peer that dies without a goodbye drops out of the others' caches.

Trust. Anyone on the LAN can announce anything. Every TXT record goes through `parse_txt`, which
bounds and checks each field (the addresses must carry the announced peer id, the label must be
that peer's) and raises BadAnnouncement; `MdnsDiscovery` logs that at debug and drops the record.
A found peer is only a hint to dial: Noise proves the peer id and the party handshake proves
membership before anything it says is believed.

Threads. zeroconf runs its own asyncio loop in a thread and calls the browser handler from a
third. The handler only hands (name, change) to trio with `TrioToken.run_sync_soon`, which never
blocks; resolving a name (`get_service_info`: the cache, else a query), registering and closing
block, so they run in trio worker threads. `PeerBook` (no IO) decides what is news, and
`on_found` is always called in the trio thread.

Interfaces. zeroconf is bound to the IPv4 addresses `mdns_interfaces` takes from the listen
addresses, so a peer listening on one address multicasts on that interface only; when they are all
on one device its sockets are also bound to that device, so it hears only that device
(`_bind_to_device` says why zeroconf alone does not do that).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

import ifaddr
import trio
from libp2p.peer.id import ID
from zeroconf import (
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from ..errors import MeshrenderError

log = logging.getLogger("meshrender.net.mdns")

SERVICE_TYPE = "_meshrender._tcp.local."  # _tcp: peers dial the announced addresses over TCP
TXT_VERSION = "1"  # bumped only for an incompatible TXT layout; new keys are added, never retyped
TAG_PREFIX_CHARS = 8  # of the party tag, in the instance label: a cheap filter, not a proof
PEER_ID_CHARS_MAX = 54  # Ed25519 ids are 52, secp256k1 53, hashed 46; 54 + 1 + 8 = 63, one DNS label
ADDRS_MAX = 8  # a peer listens on a few interfaces; bounds the TXT record and the dials it causes
MULTIADDR_CHARS_MAX = 100  # /ip4/255.255.255.255/tcp/65535/p2p/<54 chars> is 89
TXT_VALUE_BYTES_MAX = 250  # one TXT string is at most 255 bytes, key and '=' included
PEERS_MAX = 256  # peers remembered per party: a LAN party is tens; a flood cannot grow memory
RESOLVING_MAX = 64  # names being resolved at once: garbage announcements cannot spawn unbounded tasks
RESOLVE_THREADS = 4  # worker threads blocked in get_service_info at once
RESOLVE_TIMEOUT_MS = 3000  # a live peer answers in milliseconds; a fake name gives up after this
ANNOUNCE_TTL_S = 120  # record lifetime: a peer killed without a goodbye is forgotten after this
CLOSE_TIMEOUT_S = 5.0  # goodbyes take ~0.4 s; do not hold the caller's shutdown longer than this

_BASE58 = re.compile(r"^[1-9A-HJ-NP-Za-km-z]+$")
_TAG = re.compile(r"^[0-9a-f]{64}$")
_PEER_MULTIADDR = re.compile(r"^/ip4/([0-9.]{7,15})/tcp/([0-9]{1,5})/p2p/([1-9A-HJ-NP-Za-km-z]+)$")
_IP4_HEAD = re.compile(r"^/ip4/([^/]*)(?:/|$)")
# multihash code -> digest sizes of libp2p peer ids: identity (keys of at most 42 bytes, inlined)
# and sha2-256 (bigger keys: RSA, ECDSA)
_PEER_ID_DIGEST_BYTES = {0x00: range(1, 43), 0x12: range(32, 33)}


class BadAnnouncement(ValueError):
    """A TXT record (or service name) from the LAN is malformed, oversized or inconsistent: the
    announcer's fault, so the record is ignored."""


class MdnsError(MeshrenderError):
    pass


@dataclass(frozen=True)
class Announcement:
    peer_id: str
    addrs: tuple[str, ...]


# ---------------------------------------------------------------------------- records, no IO


def check_peer_id(text: str) -> str:
    """`text` if it is a canonical base58 libp2p peer id (a multihash of a key), else raise."""
    if not 1 <= len(text) <= PEER_ID_CHARS_MAX or not _BASE58.match(text):
        raise BadAnnouncement(f"peer id {text[:PEER_ID_CHARS_MAX]!r}… is not short base58")
    try:
        raw = ID.from_base58(text).to_bytes()
    except Exception as exc:  # the base58 library raises ValueError and friends
        raise BadAnnouncement(f"peer id {text!r} is not base58 ({exc})") from None
    # a multihash is <code><digest length><digest>; both are one varint byte for libp2p's two kinds
    if len(raw) < 2 or raw[1] != len(raw) - 2 or raw[1] not in _PEER_ID_DIGEST_BYTES.get(raw[0], ()):
        raise BadAnnouncement(f"peer id {text!r} is not a libp2p peer id (multihash of a key)")
    return text


def check_peer_multiaddr(text: str, peer_id: str) -> str:
    """`text` if it is `/ip4/A/tcp/P/p2p/<peer_id>` with a unicast A and a port, else raise."""
    m = _PEER_MULTIADDR.match(text) if len(text) <= MULTIADDR_CHARS_MAX else None
    if m is None:
        raise BadAnnouncement(f"{text[:MULTIADDR_CHARS_MAX]!r} is not /ip4/A/tcp/P/p2p/ID")
    try:
        ip = ipaddress.IPv4Address(m[1])
    except ValueError:
        raise BadAnnouncement(f"{text!r}: {m[1]!r} is not an IPv4 address") from None
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise BadAnnouncement(f"{text!r}: {ip} cannot be dialled")
    if not 1 <= int(m[2]) <= 65535 or m[2] != str(int(m[2])):
        raise BadAnnouncement(f"{text!r}: bad port")
    if m[3] != peer_id:
        raise BadAnnouncement(f"{text!r} names another peer than {peer_id}")
    return text


def instance_label(peer_id: str, party_tag: str) -> str:
    return f"{peer_id}-{party_tag[:TAG_PREFIX_CHARS]}"


def encode_txt(*, peer_id: str, addrs: Iterable[str], party_tag: str) -> dict[bytes, bytes]:
    """Our TXT properties. Raises ValueError (our own bad input) for anything `parse_txt` would
    refuse, so we never announce what a peer would drop."""
    addrs = list(addrs)
    if not 1 <= len(addrs) <= ADDRS_MAX:
        raise ValueError(f"announce 1..{ADDRS_MAX} addresses, not {len(addrs)}")
    props = {b"v": TXT_VERSION.encode(), b"tag": party_tag.encode(), b"id": peer_id.encode()}
    props |= {f"a{i}".encode(): a.encode() for i, a in enumerate(addrs)}
    try:
        parse_txt(props, party_tag=party_tag)
    except BadAnnouncement as exc:
        raise ValueError(f"cannot announce this: {exc}") from None
    return props


def parse_txt(properties: Mapping[bytes, bytes | None], *, party_tag: str) -> Announcement:
    """The announcement in TXT properties of our party, or BadAnnouncement. Unknown keys are
    ignored (later versions add keys); addresses are a0 .. a<ADDRS_MAX-1>, duplicates dropped."""
    if not isinstance(properties, Mapping):
        raise BadAnnouncement(f"TXT properties are a {type(properties).__name__}")
    version = _txt_value(properties, b"v")
    if version != TXT_VERSION:
        raise BadAnnouncement(f"TXT version {version[:8]!r}, not {TXT_VERSION}")
    tag = _txt_value(properties, b"tag")
    if not _TAG.match(tag):
        raise BadAnnouncement("party tag is not 64 hex digits")
    if tag != party_tag:
        raise BadAnnouncement("another party")
    peer_id = check_peer_id(_txt_value(properties, b"id"))
    addrs: list[str] = []
    for i in range(ADDRS_MAX):
        key = f"a{i}".encode()
        if key in properties:
            addr = check_peer_multiaddr(_txt_value(properties, key), peer_id)
            if addr not in addrs:
                addrs.append(addr)
    if not addrs:
        raise BadAnnouncement(f"{peer_id} announces no address")
    return Announcement(peer_id=peer_id, addrs=tuple(addrs))


def _txt_value(properties: Mapping[bytes, bytes | None], key: bytes) -> str:
    raw = properties.get(key)
    if raw is None:
        raise BadAnnouncement(f"no {key.decode()}= in TXT")
    if not isinstance(raw, bytes):
        raise BadAnnouncement(f"{key.decode()}= is a {type(raw).__name__}")
    if len(raw) > TXT_VALUE_BYTES_MAX:
        raise BadAnnouncement(f"{key.decode()}= is {len(raw)} bytes")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadAnnouncement(f"{key.decode()}= is not ASCII") from None


class PeerBook:
    """What we have heard, per service name, and what is news for the caller. No IO.

    `wants(name)` filters names before any lookup; `heard(name, properties)` returns the
    announcement when the peer is new or its addresses changed (None when nothing changed), or
    raises BadAnnouncement; `gone(name)` forgets a peer (goodbye or expiry), so a peer that comes
    back is news again."""

    def __init__(self, *, peer_id: str, party_tag: str, peers_max: int = PEERS_MAX):
        self.peer_id, self.party_tag, self.peers_max = peer_id, party_tag, peers_max
        self._suffix = f"-{party_tag[:TAG_PREFIX_CHARS]}.{SERVICE_TYPE}"
        self._own = f"{instance_label(peer_id, party_tag)}.{SERVICE_TYPE}"
        self._addrs: dict[str, tuple[str, ...]] = {}  # service name -> addresses last reported

    def wants(self, name: str) -> bool:
        return isinstance(name, str) and name.endswith(self._suffix) and name != self._own

    def heard(self, name: str, properties: Mapping[bytes, bytes | None]) -> Announcement | None:
        if not self.wants(name):
            raise BadAnnouncement("not a service of this party")
        ann = parse_txt(properties, party_tag=self.party_tag)
        if name != f"{instance_label(ann.peer_id, self.party_tag)}.{SERVICE_TYPE}":
            raise BadAnnouncement(f"service name does not match its peer id {ann.peer_id}")
        if ann.peer_id == self.peer_id:
            raise BadAnnouncement("someone else announces our own peer id")
        if name not in self._addrs and len(self._addrs) >= self.peers_max:
            raise BadAnnouncement(f"already {self.peers_max} peers; ignoring {ann.peer_id}")
        if self._addrs.get(name) == ann.addrs:
            return None
        self._addrs[name] = ann.addrs
        return ann

    def gone(self, name: str) -> None:
        self._addrs.pop(name, None)

    def __len__(self) -> int:
        return len(self._addrs)


def mdns_interfaces(listen_addrs: Iterable[str]) -> list[str]:
    """The IPv4 addresses to run mDNS on, from the peer's listen multiaddrs `/ip4/A/...`: a concrete
    A gives that address only (127.0.0.1: loopback only); 0.0.0.0 gives every IPv4 address of the
    machine (the real-LAN case). Other protocols (ip6, dns) are skipped. Order kept, no repeats."""
    out: list[str] = []
    for text in listen_addrs:
        m = _IP4_HEAD.match(text)
        if m is None:
            continue
        try:
            ip = ipaddress.IPv4Address(m[1])
        except ValueError:
            raise ValueError(f"{text!r}: {m[1]!r} is not an IPv4 address") from None
        found = _all_ipv4_addresses() if ip.is_unspecified else [str(ip)]
        out += [a for a in found if a not in out]
    return out


def _all_ipv4_addresses() -> list[str]:
    return [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if ip.is_IPv4]


# ---------------------------------------------------------------------------- the service


class MdnsDiscovery:
    """Announce this peer and report the others of its party on the LAN; `run` in a nursery."""

    def __init__(self, *, peer_id: str, addrs: Iterable[str], party_tag: str, interfaces: Iterable[str]):
        """Raises ValueError for a bad peer id, address, tag or interface (all ours)."""
        if not _TAG.match(party_tag):
            raise ValueError("party tag is not 64 hex digits (see meshrender.protocol.party_tag)")
        self.peer_id, self.party_tag = peer_id, party_tag
        self.txt = encode_txt(peer_id=peer_id, addrs=addrs, party_tag=party_tag)
        self.addrs = parse_txt(self.txt, party_tag=party_tag).addrs
        self.interfaces = list(dict.fromkeys(interfaces))
        if not self.interfaces:
            raise ValueError("mDNS needs at least one interface address (see mdns_interfaces)")
        for a in self.interfaces:
            ip = ipaddress.IPv4Address(a)  # ValueError for IPv6 or junk
            if ip.is_unspecified or ip.is_multicast:
                raise ValueError(f"{a} is not an interface address (see mdns_interfaces)")
        self.book = PeerBook(peer_id=peer_id, party_tag=party_tag)
        self._running = False
        self._zc: Zeroconf | None = None
        self._nursery: trio.Nursery | None = None
        self._on_found: Callable[[str, list[str]], None] | None = None
        self._resolving: dict[str, str] = {}  # name -> "once" | "again" (changed meanwhile) | "drop"
        self._limiter = trio.CapacityLimiter(RESOLVE_THREADS)

    def service_info(self) -> ServiceInfo:
        label = instance_label(self.peer_id, self.party_tag)
        ips = list(dict.fromkeys(a.split("/")[2] for a in self.addrs))
        port = int(self.addrs[0].split("/")[4])
        return ServiceInfo(
            SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=port, properties=self.txt,
            server=f"{label}.local.", parsed_addresses=ips,
            host_ttl=ANNOUNCE_TTL_S, other_ttl=ANNOUNCE_TTL_S,
        )  # fmt: skip

    async def run(
        self, on_found: Callable[[str, list[str]], None], *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """Register, browse, and call on_found(peer_id, multiaddrs) in this trio thread for each
        other peer of the party (again when its addresses change, or when it left and came back).
        on_found must not block (hand the peer to a channel). Started once the service is
        registered; runs until cancelled, then says goodbye and closes. Raises MdnsError when no
        interface can multicast or another process announces our name."""
        if self._running:
            raise RuntimeError("MdnsDiscovery.run is already running")
        self._running = True
        try:
            await self._run(on_found, task_status)
        finally:
            self._running = False

    async def _run(self, on_found: Callable[[str, list[str]], None], task_status) -> None:
        token = trio.lowlevel.current_trio_token()
        zc = await trio.to_thread.run_sync(self._open)
        self._zc, self._on_found = zc, on_found
        browser = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery

                def handler(zeroconf, service_type, name, state_change) -> None:  # browser thread
                    try:
                        token.run_sync_soon(self._note, name, state_change)
                    except trio.RunFinishedError:
                        pass

                browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[handler])
                try:
                    await trio.to_thread.run_sync(self._register, zc)
                except NonUniqueNameException:
                    raise MdnsError(
                        f"another process on this LAN announces {self.peer_id} in this party "
                        "(the same home used twice?)"
                    ) from None
                log.debug("mDNS: announced %s on %s", self.peer_id, ", ".join(self.interfaces))
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = self._on_found = None
            self._resolving.clear()
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await trio.to_thread.run_sync(partial(_close, zc, browser), abandon_on_cancel=True)
            self._zc = None

    def _open(self) -> Zeroconf:  # worker thread
        try:
            zc = Zeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only, use_asyncio=False)
        except OSError as exc:  # port 5353 held by a stack that refuses sharing, an address gone…
            raise MdnsError(f"mDNS cannot start on {', '.join(self.interfaces)}: {exc}") from None
        if not zc.engine.senders:  # zeroconf logs and skips an address it cannot bind
            zc.close()
            raise MdnsError(f"mDNS cannot multicast on any of {', '.join(self.interfaces)}")
        device = _one_device(self.interfaces)
        if device is not None:
            for reader in zc.engine.readers:
                _bind_to_device(reader.sock, device)
        return zc

    def _register(self, zc: Zeroconf) -> None:  # worker thread
        zc.register_service(self.service_info(), allow_name_change=False)

    def _note(self, name: str, change: ServiceStateChange) -> None:
        """A browser event, in the trio thread (from run_sync_soon: must never raise)."""
        try:
            if self._nursery is None or not self.book.wants(name):
                return
            if change is ServiceStateChange.Removed:
                self.book.gone(name)
                if name in self._resolving:
                    self._resolving[name] = "drop"
                log.debug("mDNS: %s left", name)
            elif name in self._resolving:
                self._resolving[name] = "again"
            elif len(self._resolving) >= RESOLVING_MAX:
                log.debug("mDNS: %d names resolving; ignoring %s for now", RESOLVING_MAX, name)
            else:
                self._resolving[name] = "once"
                self._nursery.start_soon(self._resolve, name)
        except Exception:  # a bug here must not take trio down (run_sync_soon callbacks cannot raise)
            log.exception("mDNS: dropping browser event for %r", name)

    async def _resolve(self, name: str) -> None:
        zc = self._zc
        assert zc is not None, "resolving outside run"
        try:
            while True:
                self._resolving[name] = "once"
                try:
                    info = await trio.to_thread.run_sync(
                        zc.get_service_info, SERVICE_TYPE, name, RESOLVE_TIMEOUT_MS,
                        limiter=self._limiter, abandon_on_cancel=True,
                    )  # fmt: skip
                except Exception as exc:  # zeroconf refuses odd names (BadTypeInNameException…)
                    log.debug("mDNS: cannot resolve %r: %s", name, exc)
                    info = None
                if info is None:
                    log.debug("mDNS: %r did not resolve", name)
                elif self._resolving.get(name) != "drop":
                    self._consider(name, info)
                if self._resolving.get(name) != "again":
                    return
        finally:
            self._resolving.pop(name, None)

    def _consider(self, name: str, info: ServiceInfo) -> None:
        try:
            try:
                properties = info.properties
            except Exception as exc:  # zeroconf's TXT unpacking: garbage in, anything out
                raise BadAnnouncement(f"unreadable TXT ({exc})") from None
            ann = self.book.heard(name, properties)
        except BadAnnouncement as exc:
            log.debug("mDNS: ignoring %r: %s", name, exc)
            return
        if ann is not None and self._on_found is not None:
            log.debug("mDNS: found %s at %s", ann.peer_id, ", ".join(ann.addrs))
            self._on_found(ann.peer_id, list(ann.addrs))


def _one_device(addresses: list[str]) -> str | None:
    """The network device holding all these addresses, or None when they are on several."""
    names = {a.name for a in ifaddr.get_adapters() for ip in a.ips if ip.is_IPv4 and ip.ip in addresses}
    return names.pop() if len(names) == 1 else None


def _bind_to_device(sock: socket.socket, device: str) -> None:
    """Make zeroconf's sockets hear one device only. Its listen socket is bound to 0.0.0.0:5353 and
    joins the group on our interfaces only, yet Linux hands it the group's packets from every
    device where any socket of the machine joined (a loopback-only peer would hear, and answer,
    the LAN whenever avahi runs). IP_MULTICAST_ALL=0 is the documented cure but, measured on Linux
    6.18, a packet that then matches exactly one socket of an SO_REUSEPORT group goes to an
    arbitrary member of the group, so two stacks in one namespace steal each other's packets.
    SO_BINDTODEVICE filters without that (tests/test_mdns.py checks both effects). It is set once
    zeroconf has started, so for those first milliseconds other devices can still be heard. Several
    devices (the 0.0.0.0 case) keep zeroconf's behaviour: every device is meant then."""
    if not sys.platform.startswith("linux"):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    except OSError as exc:  # before Linux 5.7 it needs CAP_NET_RAW; discovery still works
        log.debug("mDNS: cannot bind to %s (%s); other devices' mDNS traffic may be heard", device, exc)


def _close(zc: Zeroconf, browser: ServiceBrowser | None) -> None:  # worker thread
    """Stop browsing, say goodbye (zeroconf's close unregisters) and stop zeroconf's thread."""
    try:
        if browser is not None:
            browser.cancel()
    finally:
        zc.close()

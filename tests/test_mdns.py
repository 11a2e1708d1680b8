"""mDNS discovery: TXT records and the peer book without any network, then peers in processes on
private LANs of network namespaces (tests/netns.py). Nothing here multicasts outside a namespace
this test made."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import ifaddr
import pytest
from conftest import REPO
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.secp256k1 import create_new_key_pair as new_secp256k1_key_pair
from libp2p.peer.id import ID
from netns import Member, namespaces_of_this_process, netns_unusable, party_lan
from zeroconf import ServiceInfo

from meshrender.net.mdns import (
    ADDRS_MAX,
    SERVICE_TYPE,
    TXT_VALUE_BYTES_MAX,
    BadAnnouncement,
    MdnsDiscovery,
    PeerBook,
    encode_txt,
    instance_label,
    mdns_interfaces,
    parse_txt,
)
from meshrender.protocol import party_tag

TAG, OTHER_TAG = party_tag("lan party"), party_tag("another party")
FIND_TIMEOUT_S = 10.0


def new_peer_id() -> str:
    return ID.from_pubkey(Ed25519PrivateKey.new().get_public_key()).to_base58()


def maddr(peer_id: str, ip: str = "10.231.0.2", port: int = 4001) -> str:
    return f"/ip4/{ip}/tcp/{port}/p2p/{peer_id}"


def txt(peer_id: str, *addrs: str, tag: str = TAG, **extra: bytes | None) -> dict[bytes, bytes | None]:
    props = {b"v": b"1", b"tag": tag.encode(), b"id": peer_id.encode()}
    props |= {f"a{i}".encode(): a.encode() for i, a in enumerate(addrs or [maddr(peer_id)])}
    props |= {k.encode(): v for k, v in extra.items()}
    return props


def service_name(peer_id: str, tag: str = TAG) -> str:
    return f"{instance_label(peer_id, tag)}.{SERVICE_TYPE}"


# ---------------------------------------------------------------------------- records, no network

P = new_peer_id()


def test_txt_round_trip_and_tolerated_extras():
    addrs = [maddr(P), maddr(P, "127.0.0.1", 9)]
    props = encode_txt(peer_id=P, addrs=addrs, party_tag=TAG)
    assert parse_txt(props, party_tag=TAG).addrs == tuple(addrs)
    # later versions may add keys; a repeated address counts once; a8+ are never read
    more = txt(P, maddr(P), maddr(P), future=b"x", a8=b"garbage", **{"a7": maddr(P, port=7).encode()})
    assert parse_txt(more, party_tag=TAG).addrs == (maddr(P), maddr(P, port=7))


def _sha256_peer_id() -> str:  # the form RSA and ECDSA keys take
    return ID(b"\x12\x20" + bytes(range(32))).to_base58()


# ids name the key type: fresh keys would give each pytest-xdist worker other test names
@pytest.mark.parametrize(
    "peer_id",
    [P, ID.from_pubkey(new_secp256k1_key_pair().public_key).to_base58()],
    ids=["ed25519", "secp256k1"],
)
def test_instance_label_fits_one_dns_label(peer_id):
    d = MdnsDiscovery(peer_id=peer_id, addrs=[maddr(peer_id)], party_tag=TAG, interfaces=["127.0.0.1"])
    info = d.service_info()  # builds the records; sends nothing
    label = info.name.removesuffix("." + SERVICE_TYPE)
    assert label == instance_label(peer_id, TAG) and len(label.encode()) <= 63
    assert len(info.text) < 1000 and parse_txt(info.properties, party_tag=TAG).peer_id == peer_id


def test_sha256_peer_ids_are_accepted():
    pid = _sha256_peer_id()
    assert parse_txt(txt(pid), party_tag=TAG).peer_id == pid


Q = new_peer_id()
BAD_TXT = {
    "not a mapping": [(b"v", b"1")],
    "no version": {k: v for k, v in txt(P).items() if k != b"v"},
    "newer version": txt(P) | {b"v": b"2"},
    "no tag": {k: v for k, v in txt(P).items() if k != b"tag"},
    "tag not hex": txt(P) | {b"tag": b"Z" * 64},
    "another party": txt(P, tag=OTHER_TAG),
    "no id": {k: v for k, v in txt(P).items() if k != b"id"},
    "id not base58": txt(P) | {b"id": b"0OIl" + P.encode()[4:]},
    "id not a multihash": txt("abc", maddr("abc")),
    "id with a wrong digest length": txt(ID(b"\x12\x20" + bytes(31)).to_base58()),
    "id with an unknown hash": txt(ID(b"\x13\x20" + bytes(32)).to_base58()),
    "id with a leading zero byte": txt("1" + P, maddr("1" + P)),
    "id too long": txt(P + P[:10], maddr(P + P[:10])),
    "id not ascii": txt(P) | {b"id": "12D3KooWé".encode()},
    "id without value": txt(P) | {b"id": None},
    "id of wrong type": txt(P) | {b"id": 12},
    "no address": {k: v for k, v in txt(P).items() if k != b"a0"},
    "address of another peer": txt(P, maddr(Q)),
    "address not ip4/tcp": txt(P, f"/ip6/::1/tcp/1/p2p/{P}"),
    "address with dns": txt(P, f"/dns4/example.org/tcp/1/p2p/{P}"),
    "address without peer": txt(P, "/ip4/10.0.0.1/tcp/1"),
    "unspecified address": txt(P, maddr(P, "0.0.0.0")),
    "multicast address": txt(P, maddr(P, "224.0.0.251")),
    "broadcast address": txt(P, maddr(P, "255.255.255.255")),
    "octet over 255": txt(P, maddr(P, "10.0.0.256")),
    "leading zero octet": txt(P, maddr(P, "10.0.0.01")),
    "port 0": txt(P, maddr(P, port=0)),
    "port over 65535": txt(P, maddr(P, port=65536)),
    "port with leading zero": txt(P, f"/ip4/10.0.0.1/tcp/080/p2p/{P}"),
    "oversized value": txt(P) | {b"a0": maddr(P).encode() + b"/" + b"x" * TXT_VALUE_BYTES_MAX},
    "one good one bad address": txt(P, maddr(P), maddr(Q)),
}


@pytest.mark.parametrize("case", BAD_TXT)
def test_bad_txt_is_refused(case):
    with pytest.raises(BadAnnouncement):
        parse_txt(BAD_TXT[case], party_tag=TAG)


def test_we_never_announce_what_peers_would_refuse():
    for addrs in ([], [maddr(P)] * (ADDRS_MAX + 1), [maddr(Q)], ["/ip4/0.0.0.0/tcp/1/p2p/" + P]):
        with pytest.raises(ValueError):
            encode_txt(peer_id=P, addrs=addrs, party_tag=TAG)
    with pytest.raises(ValueError):
        encode_txt(peer_id="abc", addrs=[maddr("abc")], party_tag=TAG)
    for interfaces in ([], ["0.0.0.0"], ["::1"], ["eth0"]):
        with pytest.raises(ValueError):
            MdnsDiscovery(peer_id=P, addrs=[maddr(P)], party_tag=TAG, interfaces=interfaces)
    with pytest.raises(ValueError):
        MdnsDiscovery(peer_id=P, addrs=[maddr(P)], party_tag="lan party", interfaces=["127.0.0.1"])


def test_peer_book_reports_news_only():
    book = PeerBook(peer_id=P, party_tag=TAG, peers_max=2)
    assert not book.wants(service_name(P))  # our own service
    assert not book.wants(service_name(Q, OTHER_TAG))  # another party's, by name alone
    assert not book.wants(f"{instance_label(Q, TAG)}._other._tcp.local.")
    assert book.wants(service_name(Q))

    assert book.heard(service_name(Q), txt(Q)).addrs == (maddr(Q),)
    assert book.heard(service_name(Q), txt(Q)) is None  # nothing new
    moved = txt(Q, maddr(Q), maddr(Q, "10.231.0.9"))
    assert book.heard(service_name(Q), moved).addrs == (maddr(Q), maddr(Q, "10.231.0.9"))
    book.gone(service_name(Q))
    assert book.heard(service_name(Q), moved) is not None  # back after a goodbye: news again

    R, S = new_peer_id(), new_peer_id()
    with pytest.raises(BadAnnouncement, match="does not match"):
        book.heard(service_name(R), txt(S))  # R's name, S's record
    with pytest.raises(BadAnnouncement):
        book.heard(service_name(R), txt(R, tag=OTHER_TAG))
    assert book.heard(service_name(R), txt(R)) is not None
    with pytest.raises(BadAnnouncement, match="already 2 peers"):
        book.heard(service_name(S), txt(S))
    assert len(book) == 2


def test_mdns_interfaces_follow_listen_addresses():
    assert mdns_interfaces(["/ip4/10.231.0.2/tcp/4001"]) == ["10.231.0.2"]
    assert mdns_interfaces(["/ip4/127.0.0.1/tcp/4001", f"/ip4/127.0.0.1/tcp/4002/p2p/{P}"]) == ["127.0.0.1"]
    assert mdns_interfaces(["/ip6/::1/tcp/1", "/dns4/example.org/tcp/1"]) == []
    every = {ip.ip for a in ifaddr.get_adapters() for ip in a.ips if ip.is_IPv4}  # reads, sends nothing
    got = mdns_interfaces(["/ip4/0.0.0.0/tcp/4001", "/ip4/127.0.0.1/tcp/1"])
    assert set(got) == every and "127.0.0.1" in got and len(got) == len(every)
    with pytest.raises(ValueError):
        mdns_interfaces(["/ip4/10.0.0.300/tcp/1"])


def test_service_info_is_what_zeroconf_sends():
    """The TXT bytes zeroconf puts on the wire parse back to our announcement (no network)."""
    d = MdnsDiscovery(peer_id=P, addrs=[maddr(P), maddr(P, port=5)], party_tag=TAG, interfaces=["10.0.0.1"])
    wire = ServiceInfo(SERVICE_TYPE, service_name(P), properties=d.service_info().text)
    assert parse_txt(wire.properties, party_tag=TAG).addrs == (maddr(P), maddr(P, port=5))


# ---------------------------------------------------------------------------- peers in namespaces

PEER = r"""
import json, logging, signal, sys, time
import trio
from meshrender.net.mdns import MdnsDiscovery

peer_id, ip, tag, debug = sys.argv[1:5]  # ip: the one interface, and the announced address
if debug == "debug":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    logging.getLogger("meshrender").setLevel(logging.DEBUG)

def emit(**event):
    print(json.dumps(event), flush=True)

async def main():
    emit(event="starting")  # imports done: the clock for discovery latency starts here
    mdns = MdnsDiscovery(peer_id=peer_id, addrs=[f"/ip4/{ip}/tcp/4001/p2p/{peer_id}"], party_tag=tag,
                         interfaces=[ip])
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(mdns.run, lambda peer, addrs: emit(event="found", peer_id=peer, addrs=addrs))
            emit(event="ready")
            async for _ in signals:
                nursery.cancel_scope.cancel()
    emit(event="closed")

trio.run(main)
"""


class Proc:
    """A process in a namespace; JSON lines on stdout become `events` (with arrival times), stderr
    goes to a file (a debug log must never fill a pipe and stall the process)."""

    def __init__(self, member: Member, args: list[str], stderr_path, stdin=None):
        self.t0 = time.monotonic()
        self.stderr_path = stderr_path
        with open(stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                member.argv(sys.executable, *args), cwd=REPO, stdout=subprocess.PIPE, stderr=err,
                stdin=stdin, text=True,
            )  # fmt: skip
        self.events: list[tuple[float, dict]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._lock:
                self.events.append((time.monotonic(), event))

    def seen(self, kind: str) -> list[tuple[float, dict]]:
        with self._lock:
            return [(t, e) for t, e in self.events if e["event"] == kind]

    def found(self) -> dict[str, tuple[float, list[str]]]:
        """peer id -> (arrival time of its first report, latest addresses)."""
        out: dict[str, tuple[float, list[str]]] = {}
        for t, e in self.seen("found"):
            out[e["peer_id"]] = (out.get(e["peer_id"], (t,))[0], e["addrs"])
        return out

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_until(predicate, timeout_s: float, what: str, procs=()) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            logs = "\n".join(f"--- {p.proc.args[-5:]}: {p.events[-5:]}\n{p.stderr()[-1500:]}" for p in procs)
            raise AssertionError(f"{what} not within {timeout_s} s\n{logs}")
        if any(p.proc.poll() is not None for p in procs):
            logs = "\n".join(f"--- rc {p.proc.returncode}: {p.stderr()[-3000:]}" for p in procs)
            raise AssertionError(f"a process died while waiting for {what}\n{logs}")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def lan(tmp_path):
    """lan.make(n) -> Members; lan.peer(member, interface=…, tag=…) starts a discovery process.
    Processes stop before the namespaces go; none of this run's namespaces may be left."""
    reason = netns_unusable()
    if reason:
        pytest.skip(reason)

    class Lan:
        def __init__(self):
            self.procs: list[Proc] = []

        def make(self, n: int) -> list[Member]:
            return stack.enter_context(party_lan(n))

        def peer(self, member: Member, *, interface: str | None = None, tag: str = TAG, debug=False) -> Proc:
            pid, ip = new_peer_id(), interface or member.ip
            log = tmp_path / f"peer{len(self.procs)}.log"
            p = Proc(member, ["-c", PEER, pid, ip, tag, "debug" if debug else "-"], log)
            p.peer_id, p.addrs = pid, [maddr(pid, ip)]
            self.procs.append(p)
            return p

        def run(self, member: Member, args: list[str], **kw) -> Proc:
            p = Proc(member, args, tmp_path / f"proc{len(self.procs)}.log", **kw)
            self.procs.append(p)
            return p

    with ExitStack() as stack:
        lan = Lan()
        try:
            yield lan
        finally:
            for p in lan.procs:
                p.stop()
    assert namespaces_of_this_process() == []


def ready(*procs: Proc):
    return lambda: all(p.seen("ready") for p in procs)


@pytest.mark.slow
def test_a_party_finds_itself_and_only_itself(lan):
    m = lan.make(5)
    early = [lan.peer(m[0]), lan.peer(m[1])]
    strangers = [lan.peer(m[3], tag=OTHER_TAG), lan.peer(m[4], tag=OTHER_TAG)]
    wait_until(ready(*early, *strangers), 60, "early peers registered", early + strangers)
    late = lan.peer(m[2])  # joins a LAN where everyone else already announced
    party = [*early, late]

    def all_found():
        return all({q.peer_id for q in party if q is not p} <= p.found().keys() for p in party) and all(
            strangers[1 - i].peer_id in p.found() for i, p in enumerate(strangers)
        )

    wait_until(all_found, 60, "everyone found their party", party + strangers)
    time.sleep(1.0)  # room for a wrong report to arrive
    latencies, from_launch = [], []
    for p in party:
        for q in party:
            if q is not p:
                t, addrs = p.found()[q.peer_id]
                assert addrs == q.addrs
                # from the moment both ran discovery (imports done) to the report, and from both launches
                latencies.append(round(t - max(p.seen("starting")[0][0], q.seen("starting")[0][0]), 2))
                from_launch.append(round(t - max(p.t0, q.t0), 2))
    print(f"\nmDNS discovery (s) from both started: {latencies}; from both launched: {from_launch}")
    assert max(latencies) < FIND_TIMEOUT_S, latencies
    assert all(p.found().keys() == {q.peer_id for q in party if q is not p} for p in party)
    assert [set(p.found()) for p in strangers] == [{strangers[1].peer_id}, {strangers[0].peer_id}]

    for p in party + strangers:  # a clean goodbye: cancellation unregisters and closes promptly
        t = time.monotonic()
        assert p.stop() == 0, p.stderr()[-3000:]
        assert p.seen("closed") and time.monotonic() - t < 5.0
    assert "Traceback" not in "".join(p.stderr() for p in party + strangers)


@pytest.mark.slow
def test_loopback_only_peers_hear_only_loopback(lan):
    """127.0.0.1 means loopback only, even when another peer of the same namespace has joined the
    mDNS group on the LAN interface (Linux hands that traffic to every 5353 socket), and the
    filter must not make stacks of one namespace steal each other's packets (what
    IP_MULTICAST_ALL=0 does with SO_REUSEPORT: the LAN peer of ns 0 then missed its partner)."""
    m = lan.make(2)
    lo = [lan.peer(m[0], interface="127.0.0.1"), lan.peer(m[0], interface="127.0.0.1")]
    on_lan = [lan.peer(m[0]), lan.peer(m[1])]
    everyone = lo + on_lan

    def pairs_found():
        return all(b.peer_id in a.found() for a, b in (lo, lo[::-1], on_lan, on_lan[::-1]))

    wait_until(pairs_found, 60, "both pairs found", everyone)
    time.sleep(3.0)  # every announcement has gone out by now
    assert [set(p.found()) for p in everyone] == [
        {lo[1].peer_id},
        {lo[0].peer_id},
        {on_lan[1].peer_id},
        {on_lan[0].peer_id},
    ]


GARBAGE = r"""
import json, os, socket, sys, time
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID
from zeroconf import IPVersion, ServiceInfo, Zeroconf
from meshrender.net.mdns import SERVICE_TYPE, instance_label

tag, ip = sys.argv[1:3]
new_id = lambda: ID.from_pubkey(Ed25519PrivateKey.new().get_public_key()).to_base58()
addr = lambda pid, port=4001: f"/ip4/{ip}/tcp/{port}/p2p/{pid}"
ids = [new_id() for _ in range(12)]
long_addr = addr(ids[3]) + "/" + "x" * (251 - len(addr(ids[3])) - 1)
garbage = {  # instance label -> TXT properties (or raw TXT bytes)
    ids[0]: {"v": "1", "tag": tag, "id": ids[0], "a0": addr(ids[1])},  # someone else's address
    ids[1]: {"v": "1", "tag": tag, "id": ids[2], "a0": addr(ids[2])},  # record of another id
    ids[2]: {b"v": b"1", b"tag": tag.encode(), b"id": b"\xff\xfe" + ids[2].encode(), b"a0": b"x"},
    ids[3]: {"v": "1", "tag": tag, "id": ids[3], "a0": long_addr},  # a 251-byte value
    ids[4]: {"v": "2", "tag": tag, "id": ids[4], "a0": addr(ids[4])},
    ids[5]: {"v": "1", "tag": "0" * 64, "id": ids[5], "a0": addr(ids[5])},  # our label, another tag
    ids[6]: {},
    ids[7]: {"v": None, "tag": None, "id": None, "a0": None},
    ids[8]: b"\xff" + b"v=1" * 3,  # a string claiming more bytes than the record has
    ids[9]: {"v": "1", "tag": tag, "id": ids[9], "a0": f"/ip4/0.0.0.0/tcp/4001/p2p/{ids[9]}"},
    ids[10]: {"v": "1", "tag": tag, "id": ids[10], "a0": addr(ids[10], 99999)},
}
labels = {instance_label(pid, tag): props for pid, props in garbage.items()}
labels[f"garbage-{tag[:8]}"] = {"v": "1", "tag": tag, "id": ids[11], "a0": addr(ids[11])}

def info(label, props, server):
    return ServiceInfo(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=4001, properties=props,
                       server=f"{server}.local.", parsed_addresses=[ip])

zc = Zeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
for i, (label, props) in enumerate(labels.items()):
    zc.register_service(info(label, props, f"junk{i}"), cooperating_responders=True)

# raw junk at the mDNS port: random bytes, a header promising 65535 answers, a 1-byte datagram
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
for junk in [os.urandom(n) for n in (12, 100, 1400)] + [bytes(2) + b"\x84\x00" + b"\xff" * 8, b"\x00"]:
    s.sendto(junk, ("224.0.0.251", 5353))

time.sleep(1.0)
valid = new_id()
good = info(instance_label(valid, tag), {"v": "1", "tag": tag, "id": valid, "a0": addr(valid)}, "good")
zc.register_service(good)
print(json.dumps({"event": "registered", "garbage": list(labels), "valid": valid,
                  "addrs": [addr(valid)], "moved": [addr(valid), addr(valid, 4002)]}), flush=True)
sys.stdin.readline()  # the test says when to move the valid peer to a second address
good = info(instance_label(valid, tag), {"v": "1", "tag": tag, "id": valid, "a0": addr(valid),
                                         "a1": addr(valid, 4002)}, "good")
zc.update_service(good)
print(json.dumps({"event": "updated"}), flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_garbage_announcements_are_ignored(lan):
    m = lan.make(2)
    listener = lan.peer(m[0], debug=True)
    wait_until(ready(listener), 60, "listener registered", [listener])
    junk = lan.run(m[1], ["-c", GARBAGE, TAG, m[1].ip], stdin=subprocess.PIPE)
    wait_until(lambda: junk.seen("registered"), 60, "garbage registered", [junk])
    plan = junk.seen("registered")[0][1]

    wait_until(lambda: plan["valid"] in listener.found(), FIND_TIMEOUT_S, "valid peer found", [listener])
    assert listener.found() == {plan["valid"]: (listener.found()[plan["valid"]][0], plan["addrs"])}
    junk.proc.stdin.write("move\n")
    junk.proc.stdin.flush()
    moved = lambda: listener.found()[plan["valid"]][1] == plan["moved"]  # noqa: E731
    wait_until(moved, FIND_TIMEOUT_S, "moved peer reported again", [listener])
    time.sleep(1.0)

    log = listener.stderr()
    assert listener.proc.poll() is None, log[-3000:]
    assert [e["peer_id"] for _, e in listener.seen("found")] == [plan["valid"]] * 2
    unread = [label for label in plan["garbage"] if f"ignoring '{label}.{SERVICE_TYPE}'" not in log]
    assert not unread, f"garbage never reached the parser (the test proves nothing): {unread}\n{log[-3000:]}"
    assert "Traceback" not in log
    assert listener.stop() == 0 and listener.seen("closed"), listener.stderr()[-3000:]

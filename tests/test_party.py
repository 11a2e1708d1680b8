"""A party of subprocess peers on 127.0.0.1: membership, swarm fetch, liars and garbage."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
from netns import netns_unusable, party_lan
from party import PARTY, SECRET, PeerProc, cli

pytestmark = pytest.mark.slow

LIAR = """
import sys, trio, zstandard
from meshrender.cli import main
from meshrender.node import Peer
from meshrender.protocol import Chunk
real = Peer._serve
def lying(self, h, remote):
    msg = real(self, h, remote)
    if isinstance(msg, Chunk):  # same size, one byte changed before compression
        raw = bytearray(zstandard.ZstdDecompressor().decompress(msg.data)); raw[len(raw) // 2] ^= 0xFF
        wire = zstandard.ZstdCompressor().compress(bytes(raw))
        return Chunk(hash=h, raw_size=len(raw), zstd=True, data=wire)
    return msg
Peer._serve = lying
sys.exit(main(["peer", "--headless", "--json", *sys.argv[1:]]))
"""


@pytest.fixture
def peers():
    started: list[PeerProc] = []

    def start(*args, **kw) -> PeerProc:
        p = PeerProc(*args, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def add(home, scene) -> str:
    p = cli("store", "add", scene, "--json", home=home)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["scene_id"]


def fetch(home, scene_id, *bootstrap, secret=SECRET):
    args = ["store", "fetch", scene_id, "--party", PARTY, "--secret", secret, "--json"]
    for b in bootstrap:
        args += ["--bootstrap", b]
    return cli(*args, home=home)


def test_swarm_four_peers(tmp_path, peers, big_textured):
    scene = add(tmp_path / "a", big_textured)  # about 90 chunks
    a = peers(tmp_path / "a")
    for name in ("b", "c"):
        p = fetch(tmp_path / name, scene, a.addr)
        assert p.returncode == 0, p.stderr
        rec = json.loads(p.stdout)
        assert rec["fetched_chunks"] > 50 and rec["providers"]
    b = peers(tmp_path / "b", "--bootstrap", a.addr)
    c = peers(tmp_path / "c", "--bootstrap", a.addr)
    for p in (b, c):
        a.wait_for("peer-joined", peer=p.peer_id)
    p = fetch(tmp_path / "d", scene, a.addr)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    served = {k: v for k, v in rec["bytes_by_provider"].items() if v > 0}
    assert len(served) >= 2, rec  # the source was not the only uplink
    assert set(rec["providers"]) == {a.peer_id, b.peer_id, c.peer_id}
    assert cli("store", "verify", home=tmp_path / "d").returncode == 0
    stats = json.loads(cli("store", "stats", "--json", home=tmp_path / "d").stdout)
    assert stats["complete_scenes"] == 1


def test_a_lying_peer_is_caught_and_nothing_it_sent_is_stored(tmp_path, peers, big_textured):
    scene = add(tmp_path / "a", big_textured)
    add(tmp_path / "liar", big_textured)
    a = peers(tmp_path / "a")
    liar = peers(tmp_path / "liar", "--bootstrap", a.addr, script=LIAR)
    a.wait_for("peer-joined", peer=liar.peer_id)
    p = fetch(tmp_path / "d", scene, a.addr)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert liar.peer_id in rec["penalties"], rec
    assert rec["bytes_by_provider"].get(liar.peer_id, 0) == 0  # nothing it sent was kept
    assert cli("store", "verify", home=tmp_path / "d").returncode == 0  # and every stored chunk is right


def test_a_wrong_secret_gets_nothing(tmp_path, peers):
    scene = add(tmp_path / "a", "cornell")
    a = peers(tmp_path / "a")
    p = fetch(tmp_path / "x", scene, a.addr, secret="guess")
    assert p.returncode == 2 and "let us into party" in p.stderr
    ev = a.wait_for("refused")
    assert "handshake failed" in ev["reason"]
    assert not (tmp_path / "x" / "store" / "blobs").exists() or not any(
        (tmp_path / "x" / "store" / "blobs").rglob("*.zst")
    )
    outsider = peers(tmp_path / "o", "--bootstrap", a.addr, secret="guess")
    outsider.wait_for("refused")
    assert outsider.peer_id not in {e.get("peer") for e in a.events if e["event"] == "peer-joined"}


def test_garbage_at_the_port_leaves_the_peer_running(tmp_path, peers):
    scene = add(tmp_path / "a", "cornell")
    a = peers(tmp_path / "a")
    host, port = a.addr.split("/")[2], int(a.addr.split("/")[4])
    payloads = [os.urandom(64), b"\x13/multistream/1.0.0\n" + os.urandom(200), b"\xff" * 4096, b""]
    for data in payloads:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(data)
    assert a.alive()
    p = fetch(tmp_path / "d", scene, a.addr)
    assert p.returncode == 0, p.stderr
    assert a.alive()


def test_killed_and_frozen_members_are_noticed(tmp_path, peers):
    import signal
    import time

    a = peers(tmp_path / "a")
    b = peers(tmp_path / "b", "--bootstrap", a.addr)
    c = peers(tmp_path / "c", "--bootstrap", a.addr)
    for p in (b, c):
        a.wait_for("peer-joined", peer=p.peer_id)
    time.sleep(1.0)  # pings are flowing
    killed_at = time.time()
    b.proc.send_signal(signal.SIGKILL)
    lost = a.wait_for("peer-lost", timeout=10, peer=b.peer_id)
    assert lost["t"] - killed_at <= 1.0, lost
    frozen_at = time.time()
    c.proc.send_signal(signal.SIGSTOP)
    try:
        lost = a.wait_for("peer-lost", timeout=10, peer=c.peer_id)
        assert lost["t"] - frozen_at <= 3.0, lost
    finally:
        c.proc.send_signal(signal.SIGCONT)
    assert a.alive()


def test_concurrent_fetchers_trade_among_themselves(tmp_path, peers, big_textured):
    """Three fetchers start together from one source: they serve each other what they already
    hold, so the source uploads less than three copies and each fetcher got bytes from a peer."""
    import subprocess
    import sys

    from conftest import REPO

    scene = add(tmp_path / "a", big_textured)
    a = peers(tmp_path / "a")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "meshrender", "store", "fetch", scene, "--party", PARTY, "--secret",
             SECRET, "--bootstrap", a.addr, "--json", "--home", str(tmp_path / f"f{i}")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    from_source = sum(r["bytes_by_provider"].get(a.peer_id, 0) for r in reports)
    total = sum(r["fetched_bytes"] for r in reports)
    assert from_source < total, reports  # some bytes came from fellow fetchers
    assert any(len([v for v in r["bytes_by_provider"].values() if v]) >= 2 for r in reports), reports
    for i in range(3):
        assert cli("store", "verify", home=tmp_path / f"f{i}").returncode == 0


GOSSIP_GARBAGE = """
import os, sys, trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from meshrender.net.host import open_stream
from meshrender.node import Peer
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
async def main():
    me = Peer(home=args["--home"], party=args["--party"], secret=args["--secret"].encode(),
              bootstrap=[args["--bootstrap"]])
    async with trio.open_nursery() as n:
        await n.start(me.run)
        while not me.members:
            await trio.sleep(0.05)
        target = ID.from_base58(args["--bootstrap"].rsplit("/", 1)[1])
        topic = me.gossip.topic
        for proto in ("/meshsub/1.1.0", "/meshsub/1.2.0"):
            for payload in (os.urandom(64), b"\\xff" * 10 + os.urandom(54), b"\\x05\\x0a\\x03abc"):
                s = await open_stream(me.host, n, target, proto)
                await s.write(payload)
                await trio.sleep(0.1)
                try:
                    await s.reset()
                except Exception:
                    pass
        # a signed message from a member, on the party's topic, whose body is not our gossip
        await me.gossip.pubsub.publish(topic, b"\\x93not-a-status")
        await me.gossip.pubsub.publish(topic, os.urandom(9000))
        print("done", flush=True)
        await trio.sleep(1)
        n.cancel_scope.cancel()
trio.run(main)
"""


def test_gossip_status_and_have_reach_members(tmp_path, peers):
    scene = add(tmp_path / "a", "cornell")
    a = peers(tmp_path / "a")
    b = peers(tmp_path / "b", "--bootstrap", a.addr, "--threads", "3")
    st = b.wait_for("peer-status", timeout=10, peer=a.peer_id)
    assert st["state"] == "idle" and st["version"] and st["free_mem"] > 0 and st["scenes"] == 1
    assert st["activity"] == ""  # neither rendering nor fetching
    have = b.wait_for("have", timeout=10, peer=a.peer_id)
    assert have["scene_ids"] == [scene]
    assert a.wait_for("peer-status", timeout=10, peer=b.peer_id)["threads"] == 3


def test_malformed_gossip_frames_leave_the_peer_running(tmp_path, peers):
    import subprocess
    import sys

    from conftest import REPO

    scene = add(tmp_path / "a", "cornell")
    a = peers(tmp_path / "a")
    p = subprocess.run(
        [sys.executable, "-c", GOSSIP_GARBAGE, "--home", str(tmp_path / "x"), "--party", PARTY,
         "--secret", SECRET, "--bootstrap", a.addr],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "done" in p.stdout, p.stderr[-3000:]
    assert a.alive()
    c = peers(tmp_path / "c", "--bootstrap", a.addr)  # gossip still flows to a newcomer
    assert c.wait_for("have", timeout=10, peer=a.peer_id)["scene_ids"] == [scene]
    assert fetch(tmp_path / "d", scene, a.addr).returncode == 0


@pytest.mark.skipif(netns_unusable() is not None, reason=f"{netns_unusable()}")
def test_three_peers_in_namespaces_find_each_other_by_mdns(tmp_path, peers):
    """A LAN party with no bootstrap address: three peers, each in its own network namespace on a
    private bridge, find each other by mDNS, join (handshake) and gossip."""
    with party_lan(3) as lan:
        ps = [
            peers(tmp_path / f"p{i}", "--mdns", "--listen", f"/ip4/{m.ip}/tcp/0", prefix=m.argv())
            for i, m in enumerate(lan)
        ]
        for p in ps:
            for q in ps:
                if p is not q:
                    p.wait_for("peer-joined", timeout=20, peer=q.peer_id)
                    p.wait_for("peer-status", timeout=10, peer=q.peer_id)
        listen = f"/ip4/{lan[0].ip}/tcp/0"
        outsider = peers(tmp_path / "o", "--mdns", "--listen", listen, prefix=lan[0].argv(), secret="wrong")
        time.sleep(3.0)
        joined = {e.get("peer") for p in ps for e in p.events if e["event"] == "peer-joined"}
        assert outsider.peer_id not in joined  # same party name, wrong secret: found, never let in
        for p in ps:
            p.stop()

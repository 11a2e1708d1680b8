"""The outsider's side of the party handshake, played for real.

An outsider knows the party's name and the protocol, not the secret. It either dials a member or
is dialed by one (a spoofed mDNS answer). Either way it keeps every byte the member sends and then
runs a dictionary that holds the true secret against them, with the best computation it has: for
each candidate password, the SPAKE2 key it would share with the member were that the password
(from its own SPAKE2 scalar), and every confirm that key would make. No candidate may check out.
The same attack against the old protocol (a keyed proof in HelloReply) finds the secret, and
against a right guess finds it too: the tests can fail.

Then a real party on 127.0.0.1: a wrong secret is refused and hung up on, a connection that does
Noise and nothing else is dropped within JOIN_DEADLINE_S, hears no gossip hello (the topic), and
the sixth failed handshake from one address within a minute gets no reply at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import msgspec
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.parameters.ed25519 import ParamsEd25519
from spake2.spake2 import finalize_SPAKE2

from meshrender.net.host import build_host, load_or_create_identity, open_stream, parse_multiaddr
from meshrender.net.streams import read_msg, write_msg
from meshrender.node import JOIN_DEADLINE_S, PROTO_PARTY, Peer
from meshrender.peer.membership import FAILURES_MAX, Handshake, confirmation, party_password
from meshrender.protocol import (
    PROTOCOL_VERSION,
    Hello,
    HelloConfirm,
    HelloFinish,
    HelloReply,
    Refused,
    RemoteProtocolError,
    decode_body,
    encode_frame,
    party_tag,
)

NAME = "lan party"
SECRET = b"party2024"  # weak on purpose: it is in the attacker's dictionary
DICTIONARY = [b"password", b"123456", b"letmein", b"hunter2", b"party2023", SECRET, b"lanparty"]
GUESS = b"hunter2"  # the one password the outsider commits to in its own SPAKE2 message
MEMBER, OUTSIDER = "12D3KooWMember", "12D3KooWOutsider"
G = ParamsEd25519.group


@pytest.fixture(scope="module")
def passwords() -> dict[bytes, bytes]:
    """What the attacker must compute per candidate anyway: argon2id of it (the slow part)."""
    return {c: party_password(NAME, c) for c in DICTIONARY}


def frames(*msgs) -> bytes:
    return b"".join(encode_frame(m) for m in msgs)


def spake_key(scalar: int, password: bytes, msg_a: bytes, msg_b: bytes, side: bytes, ids) -> bytes:
    """The SPAKE2 key side `side` with secret `scalar` derives from the two messages on the wire,
    were `password` the password: SPAKE2's own finish, computed for any candidate."""
    pw_scalar = G.password_to_scalar(password)
    if side == b"A":  # K = (Y* - N*pw) * x
        theirs, unblind = G.bytes_to_element(msg_b[1:]), ParamsEd25519.N
    else:  # K = (X* - M*pw) * y
        theirs, unblind = G.bytes_to_element(msg_a[1:]), ParamsEd25519.M
    k = theirs.add(unblind.scalarmult(-pw_scalar)).scalarmult(scalar)
    return finalize_SPAKE2(ids[0].encode(), ids[1].encode(), msg_a[1:], msg_b[1:], k.to_bytes(), password)


def offline_attack(transcript: bytes, passwords, scalar: int, side: bytes, msg_a: bytes, msg_b: bytes):
    """Every candidate secret whose key, or a confirm made with it, appears in the transcript."""
    ids = (OUTSIDER, MEMBER) if side == b"A" else (MEMBER, OUTSIDER)
    tag = party_tag(NAME)
    found = []
    for candidate, pw in passwords.items():
        key = spake_key(scalar, pw, msg_a, msg_b, side, ids)
        confirms = [confirmation(key, role, tag, *ids, msg_a, msg_b) for role in (b"dialer", b"listener")]
        if any(t in transcript for t in [key, *confirms]):
            found.append(candidate)
    return found


# ---- (a) the outsider dials a member ----------------------------------------------------------------


def outsider_dials(member_pw: bytes, guess_pw: bytes):
    """An outsider dials a member whose password is member_pw; its SPAKE2 message is blinded with
    guess_pw. Returns (every byte the member sent, the outsider's scalar, both SPAKE2 messages)."""
    member = Handshake("listener", member_pw, NAME, MEMBER, OUTSIDER)
    attacker = SPAKE2_A(guess_pw, idA=OUTSIDER.encode(), idB=MEMBER.encode())
    msg_a = attacker.start()
    sent = []  # what the member puts on the wire, in order
    reply = member.receive(decode_body(frames(Hello(version=PROTOCOL_VERSION, party_tag=party_tag(NAME),
                                                    spake=msg_a))[4:]))  # fmt: skip
    sent.append(reply)
    msg_b = reply.spake
    key = attacker.finish(msg_b)  # the outsider's best confirm: made with its guess
    best = confirmation(key, b"dialer", party_tag(NAME), OUTSIDER, MEMBER, msg_a, msg_b)
    finish = HelloFinish(confirm=best)
    try:
        sent.append(member.receive(finish))
    except RemoteProtocolError:
        sent.append(Refused(reason="not a member of this party"))  # what the node sends then
    return frames(*sent), attacker.xy_scalar, msg_a, msg_b, sent


def test_an_outsider_dialing_a_member_gets_nothing_to_test_guesses_against(passwords):
    transcript, x, msg_a, msg_b, sent = outsider_dials(passwords[SECRET], passwords[GUESS])
    assert [type(m) for m in sent] == [HelloReply, Refused]  # a random group element, then no
    assert offline_attack(transcript, passwords, x, b"A", msg_a, msg_b) == []
    # the attack is not blind: had the outsider guessed right, it would have got in, and the
    # member's confirm then checks out against exactly the true secret (one online guess)
    transcript, x, msg_a, msg_b, sent = outsider_dials(passwords[SECRET], passwords[SECRET])
    assert isinstance(sent[-1], HelloConfirm)
    assert offline_attack(transcript, passwords, x, b"A", msg_a, msg_b) == [SECRET]


def test_the_same_attack_breaks_the_old_protocol():
    """Protocol 1, in a few lines: the listener answered any Hello with a MAC under a fast hash of
    (name, secret). One reply and the dictionary finds the secret offline."""

    def old_key(secret: bytes) -> bytes:
        h = blake3.blake3(derive_key_context="meshrender party key v1")
        h.update(len(NAME.encode()).to_bytes(4, "big") + NAME.encode() + secret)
        return h.digest()

    def old_mac(key: bytes, role: bytes, n_d: bytes, n_l: bytes) -> bytes:
        h = blake3.blake3(key=key)
        for part in (role, party_tag(NAME).encode(), OUTSIDER.encode(), MEMBER.encode(), n_d, n_l):
            h.update(len(part).to_bytes(4, "big") + part)
        return h.digest()

    n_d, n_l = os.urandom(32), os.urandom(32)  # the outsider's Hello nonce; the member's
    reply = {"t": "hello-reply", "nonce": n_l, "proof": old_mac(old_key(SECRET), b"listener", n_d, n_l)}
    body = msgspec.msgpack.encode(reply)
    transcript = len(body).to_bytes(4, "big") + body
    got = msgspec.msgpack.decode(transcript[4:])
    found = [c for c in DICTIONARY if old_mac(old_key(c), b"listener", n_d, got["nonce"]) in transcript]
    assert found == [SECRET]


# ---- (b) a member dials an outsider (an impostor) ---------------------------------------------------


def member_dials(member_pw: bytes, guess_pw: bytes):
    member = Handshake("dialer", member_pw, NAME, MEMBER, OUTSIDER)
    impostor = SPAKE2_B(guess_pw, idA=MEMBER.encode(), idB=OUTSIDER.encode())
    hello = member.start()
    msg_b = impostor.start()
    sent = [hello, member.receive(HelloReply(spake=msg_b))]
    garbage = HelloConfirm(confirm=os.urandom(32))  # it cannot make the listener's confirm
    with pytest.raises(RemoteProtocolError):
        member.receive(garbage)
    assert not member.member
    return frames(*sent), impostor.xy_scalar, hello.spake, msg_b


def test_a_member_dialing_an_impostor_gives_it_nothing_to_test_guesses_against(passwords):
    transcript, y, msg_a, msg_b = member_dials(passwords[SECRET], passwords[GUESS])
    assert offline_attack(transcript, passwords, y, b"B", msg_a, msg_b) == []
    # the one guess it committed to is all it can check: right, and the attack finds it
    transcript, y, msg_a, msg_b = member_dials(passwords[SECRET], passwords[SECRET])
    assert offline_attack(transcript, passwords, y, b"B", msg_a, msg_b) == [SECRET]


# ---- (c) a real party on 127.0.0.1 -------------------------------------------------------------------

GOOD = b"a strong party secret, long enough"


def peer(tmp_path: Path, name: str, secret: bytes, events: list, **kw) -> Peer:
    return Peer(home=tmp_path / name, party=NAME, secret=secret, render=False,
                on_event=events.append, **kw)  # fmt: skip


def addr_of(p: Peer) -> str:
    a = p.addrs[0]
    return a if "/p2p/" in a else f"{a}/p2p/{p.peer_id}"


class Recorder:
    """A bare libp2p host (Noise, no party): keeps every byte anyone sends it on /meshsub."""

    def __init__(self, home: Path):
        self.host = build_host(load_or_create_identity(home))
        self.received = bytearray()
        for proto in ("/meshsub/1.2.0", "/meshsub/1.1.0", "/floodsub/1.0.0"):
            self.host.set_stream_handler(TProtocol(proto), self._keep)

    async def _keep(self, stream) -> None:
        try:
            while data := await stream.read(65536):
                self.received += data
        except Exception:  # reset by the other side: what came is kept
            pass


def connected(host, peer_id: str) -> bool:
    conns = host.get_network().get_connections(ID.from_base58(peer_id))
    return any(not c.is_closed for c in conns)


@pytest.mark.slow
def test_a_wrong_secret_is_refused_and_hung_up_on(tmp_path):
    ev_a, ev_x = [], []

    async def main():
        a = peer(tmp_path, "a", GOOD, ev_a)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            x = peer(tmp_path, "x", GOOD + b"?", ev_x, bootstrap=[addr_of(a)])
            await n.start(x.run)
            with trio.fail_after(10):
                while not any(e["event"] == "refused" for e in ev_x):
                    await trio.sleep(0.05)
                while connected(a.host, x.peer_id) or connected(x.host, a.peer_id):
                    await trio.sleep(0.05)
            assert not a.members and not x.members
            n.cancel_scope.cancel()

    trio.run(main)
    assert any(e["event"] == "refused" and "handshake failed" in e["reason"] for e in ev_a)
    assert not any(e["event"] == "peer-joined" for e in ev_a + ev_x)


@pytest.mark.slow
def test_noise_only_is_dropped_within_the_deadline_and_never_hears_the_topic(tmp_path):
    ev_a, ev_m = [], []
    out: dict = {}

    async def main():
        a = peer(tmp_path, "a", GOOD, ev_a)
        async with trio.open_nursery() as n:
            await n.start(a.run)
            topic = a.gossip.topic.encode()
            # the outsider: Noise, then nothing of the party; it listens for pubsub hellos and
            # opens /meshsub itself to read whatever comes back
            outsider = Recorder(tmp_path / "o")
            async with outsider.host.run(listen_addrs=[parse_multiaddr("/ip4/127.0.0.1/tcp/0")]):
                t0 = trio.current_time()
                await outsider.host.connect(info_from_p2p_addr(parse_multiaddr(addr_of(a))))
                try:
                    s = await open_stream(outsider.host, n, ID.from_base58(a.peer_id), "/meshsub/1.2.0")
                    with trio.move_on_after(JOIN_DEADLINE_S + 1.5):
                        while data := await s.read(65536):
                            outsider.received += data
                except Exception:  # reset when the connection goes: expected
                    pass
                with trio.fail_after(5):
                    while connected(outsider.host, a.peer_id):
                        await trio.sleep(0.02)
                out["dropped_s"] = trio.current_time() - t0
                out["outsider_bytes"] = bytes(outsider.received)
            # the control: a member with the same recorder on /meshsub does hear the topic
            m = peer(tmp_path, "m", GOOD, ev_m)
            await n.start(m.run)
            spy = Recorder.__new__(Recorder)
            spy.received = bytearray()
            for proto in ("/meshsub/1.2.0", "/meshsub/1.1.0"):
                m.host.set_stream_handler(TProtocol(proto), Recorder._keep.__get__(spy))
            await m.dial(addr_of(a))
            with trio.fail_after(10):
                while topic not in spy.received:
                    await trio.sleep(0.05)
            out["topic"] = topic
            n.cancel_scope.cancel()

    trio.run(main)
    assert out["dropped_s"] <= 3.0, out["dropped_s"]  # JOIN_DEADLINE_S is 2 s
    assert out["topic"] not in out["outsider_bytes"]
    assert any(e["event"] == "dropped" for e in ev_a)


async def attempt(tmp_path: Path, i: int, nursery, target: Peer, guess_pw: bytes) -> list:
    """One outsider handshake from 127.0.0.1 under a fresh identity: what came back."""
    host = build_host(load_or_create_identity(tmp_path / f"attacker{i}"))
    got: list = []
    async with host.run(listen_addrs=[parse_multiaddr("/ip4/127.0.0.1/tcp/0")]):
        try:
            await host.connect(info_from_p2p_addr(parse_multiaddr(addr_of(target))))
            await trio.sleep(0.1)  # give a blocked source's hang-up time to land first
            remote = str(host.get_id())
            hs = SPAKE2_A(guess_pw, idA=remote.encode(), idB=target.peer_id.encode())
            msg_a = hs.start()
            stream = await open_stream(host, nursery, ID.from_base58(target.peer_id), PROTO_PARTY, 3.0)
            await write_msg(stream, Hello(version=PROTOCOL_VERSION, party_tag=party_tag(NAME), spake=msg_a))
            reply = await read_msg(stream, 3.0)
            got.append(reply)
            if isinstance(reply, HelloReply):
                key = hs.finish(reply.spake)
                c = confirmation(key, b"dialer", party_tag(NAME), remote, target.peer_id, msg_a, reply.spake)
                await write_msg(stream, HelloFinish(confirm=c))
                got.append(await read_msg(stream, 3.0))
        except Exception as exc:  # hung up on: the connection or stream is gone
            got.append(type(exc).__name__)
    return got


@pytest.mark.slow
def test_the_sixth_failed_handshake_in_a_minute_gets_no_reply(tmp_path):
    ev_a: list = []
    results: list = []

    async def main():
        a = peer(tmp_path, "a", GOOD, ev_a)
        guess = party_password(NAME, b"a weak guess")
        async with trio.open_nursery() as n:
            await n.start(a.run)
            for i in range(FAILURES_MAX + 2):
                results.append(await attempt(tmp_path, i, n, a, guess))
            n.cancel_scope.cancel()

    trio.run(main)
    for got in results[:FAILURES_MAX]:  # five full tries: a group element, then no
        assert isinstance(got[0], HelloReply) and isinstance(got[1], Refused), got
    for got in results[FAILURES_MAX:]:  # then not a byte of the handshake
        assert not any(isinstance(m, HelloReply | Refused) for m in got), got
    blocked = [e for e in ev_a if e["event"] == "handshake-blocked"]
    assert len(blocked) == 1 and blocked[0]["source"] == "127.0.0.1"  # one line per offender
    refused = [e for e in ev_a if e["event"] == "refused"]
    assert len(refused) == FAILURES_MAX  # the hung-up attempts were not even run

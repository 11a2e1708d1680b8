"""The party handshake and the failed-handshake limiter, sans-IO: messages and `now` in, verdicts out.

The outsider's view (every byte it gets, attacked offline with a dictionary) is in
test_party_outsider.py; here, that members get in and nobody else does, whatever the order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sansio

from meshrender.peer import membership
from meshrender.peer.membership import (
    ARGON2_MEMORY_KIB,
    FAILURE_WINDOW_S,
    FAILURES_MAX,
    FailureLimiter,
    Handshake,
    gossip_topic,
    party_password,
)
from meshrender.protocol import (
    PROTOCOL_VERSION,
    SPAKE_MSG_BYTES,
    Hello,
    HelloConfirm,
    HelloFinish,
    HelloReply,
    LocalProtocolError,
    Refused,
    RemoteProtocolError,
    decode_body,
    encode_frame,
    party_tag,
)

A, B, C = "12D3KooWAlice", "12D3KooWBob", "12D3KooWCarol"
NAME = "lan"
SECRET = b"correct horse battery staple"


@pytest.fixture(scope="module")
def pw() -> bytes:
    return party_password(NAME, SECRET)


@pytest.fixture(scope="module")
def other_pw() -> bytes:
    return party_password(NAME, b"correct horse battery stapler")


def wire(msg):
    """Through the real encoder and decoder, as the bytes would travel."""
    return decode_body(encode_frame(msg)[4:])


def pair(pw_d: bytes, pw_l: bytes, name_d=NAME, name_l=NAME, ids_d=(A, B), ids_l=(B, A)):
    return Handshake("dialer", pw_d, name_d, *ids_d), Handshake("listener", pw_l, name_l, *ids_l)


def run(d: Handshake, lis: Handshake) -> None:
    """The four messages in order, each through the wire codec."""
    reply = lis.receive(wire(d.start()))
    finish = d.receive(wire(reply))
    confirm = lis.receive(wire(finish))
    assert d.receive(wire(confirm)) is None


# ---- layering -----------------------------------------------------------------------------------

ALLOWED = {
    "__future__", "hmac", "collections", "collections.abc", "dataclasses", "functools", "typing",
    "blake3", "argon2.low_level", "spake2", "meshrender.protocol", "math",
}  # fmt: skip


def test_membership_imports_no_io_no_clock_no_random():
    assert sansio.forbidden_imports(Path(membership.__file__).read_text(), ALLOWED) == []


def test_importing_membership_pulls_in_neither_trio_nor_libp2p():
    code = "import sys, meshrender.peer.membership; "
    code += "print([n for n in ('trio', 'libp2p') if n in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- the password ---------------------------------------------------------------------------------


def test_password_is_slow_salted_by_the_name_and_cached(pw):
    assert len(pw) == 32 and pw != SECRET
    assert party_password(NAME, SECRET) is pw  # cached: a peer pays argon2id once
    assert party_password("other party", SECRET) != pw  # the name salts it
    assert ARGON2_MEMORY_KIB >= 64 * 1024  # memory-hard: each guess costs an attacker 64 MiB
    with pytest.raises(LocalProtocolError):
        party_password(NAME, b"")


def test_gossip_topic_comes_from_the_password_not_the_secret(pw, other_pw):
    assert gossip_topic(pw) != gossip_topic(other_pw) and len(gossip_topic(pw)) == 32
    with pytest.raises(LocalProtocolError, match="not the secret"):
        gossip_topic(SECRET)  # the raw secret is refused: only the slow password names the topic


# ---- the handshake --------------------------------------------------------------------------------


def test_members_prove_the_secret_to_each_other(pw):
    d, lis = pair(pw, pw)
    hello = d.start()
    assert hello.version == PROTOCOL_VERSION and hello.party_tag == party_tag(NAME)
    assert len(hello.spake) == SPAKE_MSG_BYTES == 33
    reply = lis.receive(wire(hello))
    assert isinstance(reply, HelloReply) and not lis.member and not d.member
    finish = d.receive(wire(reply))
    assert isinstance(finish, HelloFinish) and not d.member  # the dialer waits for the listener's proof
    confirm = lis.receive(wire(finish))
    assert isinstance(confirm, HelloConfirm) and lis.member
    assert d.receive(wire(confirm)) is None and d.member
    assert d.state == lis.state == "done"


def test_a_wrong_secret_is_refused_and_the_listener_never_confirms(pw, other_pw):
    d, lis = pair(other_pw, pw)  # an outsider dials a member
    finish = d.receive(lis.receive(d.start()))
    with pytest.raises(RemoteProtocolError, match="secret"):
        lis.receive(finish)
    assert not lis.member and lis.state == "failed"
    with pytest.raises(LocalProtocolError):  # a failed handshake takes nothing more
        lis.receive(finish)
    d, lis = pair(pw, other_pw)  # a member dials an impostor, which cannot make a good confirm
    finish = d.receive(lis.receive(d.start()))
    with pytest.raises(RemoteProtocolError, match="secret"):
        lis.receive(finish)
    with pytest.raises(RemoteProtocolError, match="secret"):
        d.receive(HelloConfirm(confirm=finish.confirm))  # its own confirm reflected back
    assert not d.member


def test_confirms_are_bound_to_the_connection_ids(pw):
    # the listener believes the dialer is C (a relayed or spliced connection): nobody gets in
    d, lis = pair(pw, pw, ids_l=(B, C))
    finish = d.receive(lis.receive(d.start()))
    with pytest.raises(RemoteProtocolError, match="secret"):
        lis.receive(finish)
    # the ids swapped between the two ends: the dialer's view is (A, B), the listener's (A dialed by B)
    d, lis = pair(pw, pw, ids_l=(A, B))
    finish = d.receive(lis.receive(d.start()))
    with pytest.raises(RemoteProtocolError, match="secret"):
        lis.receive(finish)
    # a confirm from one connection replayed on another pair of the same members fails too
    d1, l1 = pair(pw, pw)
    finish1 = d1.receive(l1.receive(d1.start()))
    d2, l2 = pair(pw, pw)
    l2.receive(d2.start())
    with pytest.raises(RemoteProtocolError, match="secret"):
        l2.receive(finish1)


def test_reflected_messages_fail(pw):
    d, lis = pair(pw, pw)
    hello = d.start()
    with pytest.raises(RemoteProtocolError, match="SPAKE2"):  # our own SPAKE2 message as the reply
        d.receive(HelloReply(spake=hello.spake))
    d, lis = pair(pw, pw)
    reply = lis.receive(d.start())
    other = Handshake("listener", pw, NAME, B, A)
    with pytest.raises(RemoteProtocolError, match="SPAKE2"):  # a listener's message as a Hello
        other.receive(Hello(version=PROTOCOL_VERSION, party_tag=party_tag(NAME), spake=reply.spake))
    finish = d.receive(reply)
    lis.receive(finish)
    d2, _ = pair(pw, pw)
    with pytest.raises(RemoteProtocolError, match="out of turn"):
        d2.receive(HelloConfirm(confirm=finish.confirm))


def test_garbage_spake_messages_are_the_peers_fault(pw):
    zero = b"A" + bytes(32)
    not_a_point = b"A" + bytes([2] + [0] * 31)
    for spake in (zero, not_a_point, b"S" + bytes(32), b"A" + b"\xff" * 32):
        lis = Handshake("listener", pw, NAME, B, A)
        with pytest.raises(RemoteProtocolError):
            lis.receive(Hello(version=PROTOCOL_VERSION, party_tag=party_tag(NAME), spake=spake))
        assert not lis.member
    with pytest.raises(RemoteProtocolError, match="malformed"):  # the wire bounds its length
        decode_body(encode_frame(HelloReply(spake=b"B" * 33))[4:].replace(b"B" * 33, b"B" * 34))


def test_out_of_turn_and_misuse(pw):
    d, lis = pair(pw, pw)
    with pytest.raises(RemoteProtocolError, match="out of turn"):
        lis.receive(HelloFinish(confirm=b"x" * 32))  # before any Hello
    with pytest.raises(LocalProtocolError):
        lis.start()
    hello = d.start()
    with pytest.raises(LocalProtocolError):
        d.start()
    with pytest.raises(RemoteProtocolError, match="out of turn"):
        d.receive(HelloConfirm(confirm=b"x" * 32))  # a confirm before the reply
    with pytest.raises(RemoteProtocolError, match="out of turn"):
        d.receive(hello)  # a Hello to a dialer
    old = Hello(version=1, party_tag=hello.party_tag, spake=hello.spake)
    with pytest.raises(RemoteProtocolError, match="version"):
        Handshake("listener", pw, NAME, B, A).receive(old)
    with pytest.raises(RemoteProtocolError, match="another party"):
        Handshake("listener", pw, "another party", B, A).receive(hello)
    with pytest.raises(RemoteProtocolError, match="refused: no"):
        Handshake("dialer", pw, NAME, A, B).receive(Refused(reason="no"))
    with pytest.raises(LocalProtocolError, match="not the secret"):
        Handshake("dialer", SECRET, NAME, A, B)  # the raw secret is not a password
    with pytest.raises(LocalProtocolError, match="distinct"):
        Handshake("dialer", pw, NAME, A, A)
    with pytest.raises(LocalProtocolError):
        Handshake("both", pw, NAME, A, B)  # type: ignore[arg-type]
    d, lis = pair(pw, pw)
    run(d, lis)
    with pytest.raises(RemoteProtocolError, match="out of turn"):
        lis.receive(HelloFinish(confirm=b"x" * 32))  # after the end


# ---- the limiter ----------------------------------------------------------------------------------


def test_limiter_blocks_a_source_after_five_failures_a_minute_and_only_that_source():
    lim = FailureLimiter()
    t = 1000.0
    for i in range(FAILURES_MAX - 1):
        assert lim.allows("10.0.0.9", t + i) and lim.failed("10.0.0.9", t + i) is None
    notice = lim.failed("10.0.0.9", t + 4)  # the fifth failure blocks it, once
    assert notice is not None and notice.failures == FAILURES_MAX and notice.block_s == 60.0
    assert not lim.allows("10.0.0.9", t + 5)  # the sixth attempt: hung up without a handshake
    assert lim.failed("10.0.0.9", t + 5) is None  # a failure still in flight: no second notice
    assert lim.allows("10.0.0.7", t + 5)  # another source is not touched
    assert not lim.allows("10.0.0.9", t + 63.9)
    stats = lim.statistics(t + 63.9)
    assert stats["blocked"]["10.0.0.9"]["refused"] == 2 and stats["refused"] == 2
    assert lim.allows("10.0.0.9", t + 64.1)  # the block served: five fresh tries
    assert lim.statistics(t + 64.1)["blocked"] == {}


def test_failures_spread_over_more_than_a_minute_never_block():
    lim = FailureLimiter()
    for i in range(30):  # one failure every 15.5 s: never five within a minute
        assert lim.allows("s", i * 15.5)
        assert lim.failed("s", i * 15.5) is None
    assert lim.allows("s", 30 * 15.5)


def test_back_off_doubles_for_a_source_that_keeps_failing_and_resets_when_it_stops():
    lim = FailureLimiter()
    t, blocks = 0.0, []
    for _ in range(5):
        for _ in range(FAILURES_MAX):
            while not lim.allows("s", t):
                t += 1.0
            notice = lim.failed("s", t)
        blocks.append(notice.block_s)
    assert blocks == [60.0, 120.0, 240.0, 480.0, 960.0]
    # the window holds: never more than FAILURES_MAX failures in any minute
    t += 960.0 + 3601.0  # quiet past the longest block: the back-off starts over
    for _ in range(FAILURES_MAX):
        notice = lim.failed("s", t)
    assert notice.block_s == 60.0 and notice.blocks == 1


def test_parallel_dials_to_one_address_hand_out_at_most_five_confirms():
    lim = FailureLimiter()
    assert all(lim.begin("10.0.0.5", 0.0) for _ in range(FAILURES_MAX))
    assert not lim.begin("10.0.0.5", 0.0)  # a sixth waits: five confirms are out unanswered
    assert lim.end("10.0.0.5", 0.1, ok=True) is None
    assert lim.begin("10.0.0.5", 0.1)  # a member answered: its place is free again
    notices = [lim.end("10.0.0.5", 0.2, ok=False) for _ in range(FAILURES_MAX)]
    assert notices[-1] is not None and not any(notices[:-1])
    assert not lim.begin("10.0.0.5", 0.3) and lim.is_blocked("10.0.0.5", 0.3)
    with pytest.raises(LocalProtocolError):
        lim.end("10.0.0.6", 0.3, ok=True)


def test_the_table_of_sources_is_bounded():
    lim = FailureLimiter(sources_max=100)
    for i in range(1000):
        lim.failed(f"10.0.{i // 256}.{i % 256}", float(i))
    assert lim.statistics(1000.0)["sources"] <= 100
    for i in range(FAILURES_MAX):
        lim.failed("attacker", 2000.0 + i)
    for i in range(1000):  # a flood of fresh sources does not free a blocked one
        lim.failed(f"10.1.{i // 256}.{i % 256}", 2010.0)
    assert lim.is_blocked("attacker", 2011.0)


def test_limits_are_checked():
    with pytest.raises(LocalProtocolError):
        FailureLimiter(block_s_first=FAILURE_WINDOW_S / 2)  # a block shorter than the window leaks guesses


# ---- weak secrets ---------------------------------------------------------------------------------


def test_weak_secrets_are_named_and_the_cli_says_how_to_make_a_strong_one(capsys):
    import secrets

    from meshrender.cli import warn_weak_secret
    from meshrender.peer.membership import weak_secret

    assert "13 characters" in weak_secret(b"correct horse")
    assert "bits" in weak_secret(b"a" * 40)  # long but one letter
    assert "bits" in weak_secret(b"1234567890123456")
    for strong in (secrets.token_urlsafe(24), secrets.token_hex(16), "correct horse battery staple"):
        assert weak_secret(strong.encode()) is None, strong
    warn_weak_secret(b"hunter2")
    err = capsys.readouterr().err
    assert "weak" in err and "token_urlsafe(24)" in err and "--secret-file party.secret" in err
    warn_weak_secret(secrets.token_urlsafe(24).encode())
    assert capsys.readouterr().err == ""


def test_a_secret_file_is_read_bounded_and_stripped(tmp_path):
    from meshrender.node import PeerError, read_secret

    f = tmp_path / "party.secret"
    f.write_bytes(b"  a strong secret, long enough  \n")
    assert read_secret(None, str(f)) == b"a strong secret, long enough"
    f.write_bytes(b"x" * 5000)
    with pytest.raises(PeerError, match="not a party secret file"):
        read_secret(None, str(f))
    with pytest.raises(PeerError, match="not a party secret file"):
        read_secret(None, "/dev/zero")  # would read forever unbounded
    with pytest.raises(PeerError, match="not both"):
        read_secret("s", str(f))

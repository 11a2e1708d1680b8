"""Party membership: who may join, proven without giving anyone a guess to test offline.

Sans-IO: messages and `now` in, messages and verdicts out. The caller owns streams and clocks.

How it works
  * The secret becomes the party *password* once per peer: argon2id (memory-hard, ARGON2_*
    below) of the secret, salted by the party name. Only the password is used after that; the
    gossip topic is derived from it too (`gossip_topic`), never from a fast hash of the secret.
  * The handshake is SPAKE2 (the `spake2` package magic-wormhole uses) over the password. The
    dialer is side A with idA = its own peer id, the listener side B with idB = its peer id; the
    caller takes both ids from the Noise-authenticated connection, never from a message, so a
    key agreed here belongs to exactly this pair of peers.

        dialer                                     listener
        Hello(version, party_tag, spake A)   ->
                                             <-    HelloReply(spake B)         nothing keyed yet
        HelloFinish(confirm_D)               ->    checks confirm_D (one online guess)
                                             <-    HelloConfirm(confirm_L) or Refused
        checks confirm_L

    Each confirm is a BLAKE3 MAC, under a key derived from the SPAKE2 key, of the role, the party
    tag, both ids and both SPAKE2 messages. A SPAKE2 message is a random group element whatever
    the password, so an outsider that dials us gets nothing it can test a guess against: the
    listener sends nothing keyed to a dialer that has not proven the password first. An impostor
    that a member dials (a spoofed mDNS answer) gets confirm_D, which it can check against the one
    password it blinded its own SPAKE2 message with: one online guess per connection, and the
    limiter below caps those.
  * `Handshake` is the state machine of one side on one connection. An illegal step on our side
    raises LocalProtocolError; a message out of turn, a malformed SPAKE2 element or a wrong
    confirm raises RemoteProtocolError (the peer's fault: refuse and hang up).
  * `FailureLimiter` counts failed handshakes per source (an IP address) with the caller's `now`:
    FAILURES_MAX in FAILURE_WINDOW_S and the source is blocked, BLOCK_S_FIRST doubling on each
    block up to BLOCK_S_MAX. A blocked source is hung up without a reply. The node keeps one for
    the guesses of connections it accepts (wrong confirms, garbage), one with the larger
    ABANDONED_MAX for handshakes they leave part-way (no guess tested, but each costs us a SPAKE2
    computation), and one for the confirms it sends to addresses it dials.
"""

from __future__ import annotations

import hmac
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import blake3
from argon2.low_level import Type, hash_secret_raw
from spake2 import SPAKE2_A, SPAKE2_B

from meshrender.protocol import (
    PROTOCOL_VERSION,
    SPAKE_MSG_BYTES,
    Hello,
    HelloConfirm,
    HelloFinish,
    HelloReply,
    LocalProtocolError,
    Msg,
    Refused,
    RemoteProtocolError,
    party_tag,
)

# RFC 9106's second recommended option (t=3, 64 MiB): ~0.15 s on one core of a laptop, once per
# peer start; a guess costs an attacker as much, and 64 MiB per guess starves GPU crackers.
ARGON2_TIME_COST = 3  # passes over the memory
ARGON2_MEMORY_KIB = 64 * 1024  # 64 MiB
ARGON2_PARALLELISM = 1  # one lane: the same cost on a one-core laptop as on a workstation
PASSWORD_BYTES = 32  # the argon2id output, the SPAKE2 password
SALT_BYTES = 16  # argon2's recommended salt length

# a typo'd secret retried a few times fits; a dictionary does not
FAILURES_MAX = 5  # failed handshakes one source may make within FAILURE_WINDOW_S
FAILURE_WINDOW_S = 60.0
ABANDONED_MAX = 30  # handshakes left part-way (no guess tested) a source may make per window:
# a slow member's fit, a flood of Hellos (each costs us a SPAKE2 computation) does not
BLOCK_S_FIRST = 60.0  # the first block outlasts the window, so the rate stays under FAILURES_MAX a minute
BLOCK_S_MAX = 3600.0  # the back-off doubles per block up to an hour
SOURCES_MAX = 4096  # sources remembered: an attacker with many addresses cannot grow this table


SECRET_CHARS_MIN = 16  # shorter secrets are warned about: online guesses add up over months
SECRET_BITS_MIN = 64  # an estimate below this is warned about (token_urlsafe(24) has 192)


def weak_secret(secret: bytes) -> str | None:
    """Why `secret` is weak, in a few words, or None. The estimate is rough on purpose: bits per
    character from the classes used (lower, upper, digits, other), counted over at most three
    characters per distinct character, so "aaaaaaaaaaaaaaaaaaaa" is weak however long it is."""
    if len(secret) < SECRET_CHARS_MIN:
        return f"it is {len(secret)} characters long (fewer than {SECRET_CHARS_MIN})"
    text = secret.decode("utf-8", "replace")
    pool = sum(
        n
        for n, present in (
            (26, any(c.islower() for c in text)),
            (26, any(c.isupper() for c in text)),
            (10, any(c.isdigit() for c in text)),
            (33, any(not c.isalnum() for c in text)),
        )
        if present
    )
    bits = math.log2(max(pool, 2)) * min(len(text), 3 * len(set(text)))
    if bits < SECRET_BITS_MIN:
        return f"it has about {bits:.0f} bits of entropy (fewer than {SECRET_BITS_MIN})"
    return None


def party_password(name: str, secret: bytes) -> bytes:
    """The party's SPAKE2 password: argon2id of the secret, salted by the name (slow by design:
    ~0.15 s; cached, so a peer pays it once however many handshakes it runs)."""
    if not secret:
        raise LocalProtocolError("a party needs a non-empty secret")
    return _password(name, bytes(secret))


@lru_cache(maxsize=8)
def _password(name: str, secret: bytes) -> bytes:
    salt = blake3.blake3(name.encode(), derive_key_context="meshrender party salt v2").digest()[:SALT_BYTES]
    return hash_secret_raw(
        secret,
        salt,
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_PARALLELISM,
        hash_len=PASSWORD_BYTES,
        type=Type.ID,
    )


def gossip_topic(password: bytes) -> str:
    """The party's gossip topic, derived from the slow password: only members can name it, and
    it is no faster a test of a guess than the handshake."""
    _check_password(password)
    return blake3.blake3(password, derive_key_context="meshrender gossip topic v2").hexdigest()[:32]


def _check_password(password: bytes) -> None:
    if len(password) != PASSWORD_BYTES:
        raise LocalProtocolError("the password is party_password()'s 32 bytes, not the secret")


def confirmation(
    spake_key: bytes, role: bytes, tag: str, dialer_id: str, listener_id: str, msg_a: bytes, msg_b: bytes
) -> bytes:
    """The confirm `role` (b"dialer" or b"listener") sends: a BLAKE3 MAC, under a key derived
    from the SPAKE2 key, of the role, the party tag, both ids and both SPAKE2 messages."""
    key = blake3.blake3(spake_key, derive_key_context="meshrender party confirm v2").digest()
    h = blake3.blake3(key=key)
    for part in (role, tag.encode(), dialer_id.encode(), listener_id.encode(), msg_a, msg_b):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


class Handshake:
    """One side of the party handshake on one connection.

    dialer:   start() -> Hello;  receive(HelloReply) -> HelloFinish;  receive(HelloConfirm) -> None
    listener: receive(Hello) -> HelloReply;  receive(HelloFinish) -> HelloConfirm
    `member` becomes True when the other side has proven the password (the listener knows it on
    HelloFinish, the dialer on HelloConfirm). Refused, at any step, raises RemoteProtocolError.
    `entropy(n)` gives the SPAKE2 scalar's random bytes (default: the OS's)."""

    def __init__(
        self,
        role: Literal["dialer", "listener"],
        password: bytes,
        name: str,
        local_id: str,
        remote_id: str,
        *,
        entropy: Callable[[int], bytes] | None = None,
    ):
        if role not in ("dialer", "listener"):
            raise LocalProtocolError(f"a handshake side is the dialer or the listener, not {role!r}")
        _check_password(password)
        if not local_id or not remote_id or local_id == remote_id:
            raise LocalProtocolError("both peer ids, taken from the connection, and distinct")
        self.role = role
        self.tag = party_tag(name)
        self._dialer, self._listener = (local_id, remote_id) if role == "dialer" else (remote_id, local_id)
        side = SPAKE2_A if role == "dialer" else SPAKE2_B
        extra = {} if entropy is None else {"entropy_f": entropy}
        self._spake = side(password, idA=self._dialer.encode(), idB=self._listener.encode(), **extra)
        self._msg_a = self._msg_b = b""  # the dialer's and the listener's SPAKE2 messages
        self._key = b""  # the SPAKE2 key, once agreed
        self.state = "new"
        self.member = False

    def start(self) -> Hello:
        if self.role != "dialer" or self.state != "new":
            raise LocalProtocolError(f"start() on a {self.role} in state {self.state}")
        self._msg_a = self._spake.start()
        self.state = "sent-hello"
        return Hello(version=PROTOCOL_VERSION, party_tag=self.tag, spake=self._msg_a)

    def receive(self, msg: Msg) -> Msg | None:
        if self.state in ("failed", "refused"):
            raise LocalProtocolError(f"receive() after the handshake {self.state}")
        if isinstance(msg, Refused):
            self.state = "refused"
            raise RemoteProtocolError(f"refused: {msg.reason}")
        if self.role == "listener" and self.state == "new" and isinstance(msg, Hello):
            if msg.version != PROTOCOL_VERSION:
                self.state = "failed"
                raise RemoteProtocolError(f"protocol version {msg.version}, we speak {PROTOCOL_VERSION}")
            if msg.party_tag != self.tag:
                self.state = "failed"
                raise RemoteProtocolError("the peer asked for another party")
            self._msg_b = self._spake.start()
            self._agree(msg.spake)
            self._msg_a = msg.spake
            self.state = "sent-reply"
            return HelloReply(spake=self._msg_b)
        if self.role == "dialer" and self.state == "sent-hello" and isinstance(msg, HelloReply):
            self._agree(msg.spake)
            self._msg_b = msg.spake
            self.state = "sent-finish"
            return HelloFinish(confirm=self._confirm(b"dialer"))
        if self.role == "listener" and self.state == "sent-reply" and isinstance(msg, HelloFinish):
            self._check(msg.confirm, b"dialer")
            self.state = "done"
            self.member = True
            return HelloConfirm(confirm=self._confirm(b"listener"))
        if self.role == "dialer" and self.state == "sent-finish" and isinstance(msg, HelloConfirm):
            self._check(msg.confirm, b"listener")
            self.state = "done"
            self.member = True
            return None
        raise RemoteProtocolError(f"{type(msg).__name__} out of turn in handshake state {self.state}")

    def _agree(self, theirs: bytes) -> None:
        if len(theirs) != SPAKE_MSG_BYTES:  # the wire type bounds it; a direct caller may not
            self.state = "failed"
            raise RemoteProtocolError(f"a SPAKE2 message of {len(theirs)} bytes, not {SPAKE_MSG_BYTES}")
        try:
            self._key = self._spake.finish(theirs)
        except Exception as exc:  # wrong side, reflected, not a point, wrong subgroup: all theirs
            self.state = "failed"
            raise RemoteProtocolError(f"bad SPAKE2 message ({type(exc).__name__}: {exc})") from None

    def _confirm(self, role: bytes) -> bytes:
        return confirmation(self._key, role, self.tag, self._dialer, self._listener, self._msg_a, self._msg_b)

    def _check(self, confirm: bytes, role: bytes) -> None:
        if not hmac.compare_digest(confirm, self._confirm(role)):
            self.state = "failed"
            raise RemoteProtocolError("the peer does not know the party secret")


# ---------------------------------------------------------------------------- the limiter


@dataclass(frozen=True)
class Blocked:
    """A source was just blocked: say so once (its later attempts are only counted)."""

    source: str
    failures: int  # within the window, this one included
    block_s: float
    blocks: int  # how many times this source has been blocked (the back-off's exponent + 1)


@dataclass
class _Source:
    failures: deque = field(default_factory=deque)  # times of recent failures
    in_flight: int = 0  # dials whose confirm has gone out and whose answer has not come
    blocked_until: float = float("-inf")
    blocks: int = 0
    refused: int = 0  # attempts hung up while blocked
    last_s: float = float("-inf")  # last failure


class FailureLimiter:
    """Failed handshakes per source. `allows(source, now)` before anything is run for a source
    (False: hang up at once, no reply); `failed(source, now)` after a failure, which returns a
    Blocked notice when that failure blocks the source. For dials, where the answer to our
    confirm comes later, `begin` reserves one of the FAILURES_MAX places until `end`, so parallel
    dials cannot hand out more confirms than that."""

    def __init__(
        self,
        failures_max: int = FAILURES_MAX,
        window_s: float = FAILURE_WINDOW_S,
        block_s_first: float = BLOCK_S_FIRST,
        block_s_max: float = BLOCK_S_MAX,
        sources_max: int = SOURCES_MAX,
    ):
        if failures_max < 1 or window_s <= 0 or block_s_first < window_s or block_s_max < block_s_first:
            raise LocalProtocolError("limits: failures_max >= 1, window_s <= block_s_first <= block_s_max")
        self.failures_max = failures_max
        self.window_s = window_s
        self.block_s_first = block_s_first
        self.block_s_max = block_s_max
        self.sources_max = sources_max
        self._sources: dict[str, _Source] = {}
        self.refused = 0  # attempts hung up, all sources together

    def _get(self, source: str, now: float) -> _Source:
        s = self._sources.get(source)
        if s is None:
            if len(self._sources) >= self.sources_max:
                self._forget(now)
            s = self._sources[source] = _Source()
        while s.failures and s.failures[0] <= now - self.window_s:
            s.failures.popleft()
        if s.blocked_until <= now and s.blocked_until != float("-inf"):
            s.failures.clear()  # a block served wipes the slate, not the back-off
            s.blocked_until = float("-inf")
        if s.blocks and now - max(s.last_s, s.blocked_until) > self.block_s_max:
            s.blocks = 0  # quiet for the longest block: the back-off starts over
        return s

    def _forget(self, now: float) -> None:
        """Make room: drop sources that are quiet (not blocked, nothing in flight), the quietest
        first; when every source is blocked, the one whose block ends first."""
        quiet = [k for k, s in self._sources.items() if s.blocked_until <= now and not s.in_flight]
        victims = sorted(quiet, key=lambda k: self._sources[k].last_s)[: max(1, len(quiet) // 2)]
        if not victims:
            victims = [min(self._sources, key=lambda k: self._sources[k].blocked_until)]
        for k in victims:
            del self._sources[k]

    def is_blocked(self, source: str, now: float) -> bool:
        s = self._sources.get(source)
        return s is not None and self._get(source, now).blocked_until > now

    def allows(self, source: str, now: float) -> bool:
        """May a handshake run for `source` now? A refusal is counted (see `statistics`)."""
        if self.is_blocked(source, now):
            self._sources[source].refused += 1
            self.refused += 1
            return False
        return True

    def begin(self, source: str, now: float) -> bool:
        """Reserve a place for a confirm about to be sent to `source` (a dial); False when the
        source is blocked or every place is taken by failures and confirms still in flight."""
        if not self.allows(source, now):
            return False
        s = self._get(source, now)
        if len(s.failures) + s.in_flight >= self.failures_max:
            return False
        s.in_flight += 1
        return True

    def end(self, source: str, now: float, *, ok: bool) -> Blocked | None:
        s = self._get(source, now)
        if s.in_flight <= 0:
            raise LocalProtocolError(f"end() for {source} without begin()")
        s.in_flight -= 1
        return None if ok else self.failed(source, now)

    def failed(self, source: str, now: float) -> Blocked | None:
        s = self._get(source, now)
        s.failures.append(now)
        s.last_s = now
        if len(s.failures) < self.failures_max or s.blocked_until > now:
            return None
        block_s = min(self.block_s_first * 2**s.blocks, self.block_s_max)
        s.blocks += 1
        s.blocked_until = now + block_s
        return Blocked(source=source, failures=len(s.failures), block_s=block_s, blocks=s.blocks)

    def statistics(self, now: float) -> dict:
        """Sources blocked now (with seconds left and attempts refused) and refusals in all."""
        blocked = {
            k: {"s_left": round(s.blocked_until - now, 1), "refused": s.refused, "blocks": s.blocks}
            for k, s in self._sources.items()
            if s.blocked_until > now
        }
        return {"blocked": blocked, "refused": self.refused, "sources": len(self._sources)}

"""A py-libp2p host hardened for a render party, and the peer's persistent identity.

py-libp2p 0.8.1 facts that shape this (measured; see issue 4):
  * its default host also accepts /plaintext/2.0.0 (and secio, TLS), which lets a peer claim
    another's ID: we offer Noise only;
  * every connect() waits 250 ms unless max_connections_per_peer is 1;
  * TCP + Noise + yamux is the stack that keeps bytes at stream ends (QUIC lost some, mplex was slow);
  * new_stream to a frozen peer can ignore cancellation: `open_stream` runs it in its own task
    and gives up waiting after a deadline, closing the stream if it turns up later;
  * it reads unbounded lengths before anyone has authenticated (GHSA-hmjq-g7pp-rw3x and more):
    `build_host` swaps in the bounded pieces of `meshrender.net.libp2p_fixes` (see there);
  * identify and multistream `ls` list every protocol to anyone: a peer that has not joined gets
    only `open_protocols` (the party handshake), gossip, and an identify that lists just those.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.identity.identify.identify import ID as IDENTIFY_PROTOCOL_ID
from libp2p.identity.identify.identify import identify_handler_for
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID

from ..errors import MeshrenderError
from . import libp2p_fixes as fixes

log = logging.getLogger("meshrender.net")

IDENTITY_FILE = "identity.ed25519"
DIAL_TIMEOUT_S = 5.0  # a LAN peer answers in milliseconds; a dead address should not hold us long
STREAM_OPEN_TIMEOUT_S = 5.0
UPGRADE_TIMEOUT_S = 5.0  # Noise + yamux take milliseconds on a LAN; an idle socket is let go after this
OUTSIDER_PROTOCOL_PREFIXES = ("/meshsub/",)  # gossip answers outsiders itself (it checks membership)


class IdentityError(MeshrenderError):
    pass


def load_or_create_identity(home: Path) -> KeyPair:
    """The peer's Ed25519 key, created once under `home` (mode 0600) and reused after."""
    path = Path(home) / IDENTITY_FILE
    if path.exists():
        raw = path.read_bytes()
        try:
            priv = Ed25519PrivateKey.from_bytes(raw)
        except Exception as exc:  # the key library raises ValueError and friends
            problem = f"not an Ed25519 private key ({exc}); move it away for a new one"
            raise IdentityError(f"{path}: {problem}") from None
        return KeyPair(priv, priv.get_public_key())
    path.parent.mkdir(parents=True, exist_ok=True)
    priv = Ed25519PrivateKey.new()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, priv.to_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return KeyPair(priv, priv.get_public_key())


def _nobody(peer_id: str) -> bool:
    return False


def build_host(key_pair: KeyPair, *, is_member: fixes.IsMember = _nobody, open_protocols=()):
    """TCP + Noise (only) + yamux (only, no mplex), one connection per peer, every read before
    the party handshake bounded, inbound connections admitted per source address.

    `is_member(peer_id)` says whether a peer has joined the party: until it has, its streams may
    negotiate only `open_protocols`, gossip and a reduced identify, and the tighter yamux limits
    and the admission table apply to its connection."""
    security = {NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)}
    config = ConnectionConfig(
        max_connections_per_peer=1, dial_timeout=DIAL_TIMEOUT_S, inbound_upgrade_timeout=UPGRADE_TIMEOUT_S,
        outbound_upgrade_timeout=UPGRADE_TIMEOUT_S,
    )  # fmt: skip
    muxers = {TProtocol(YAMUX_PROTOCOL_ID): fixes.bounded_yamux(is_member)}
    host = new_host(key_pair=key_pair, sec_opt=security, muxer_opt=muxers, connection_config=config)
    swarm = host.get_network()
    upgrader = swarm.upgrader
    fixes.bound_selector(upgrader.security_multistream._selector)
    upgrader.muxer_multistream = fixes.BoundedMuxerMultistream(
        muxers, upgrader.muxer_multistream.negotiate_timeout
    )
    fixes.install_admission(swarm, fixes.AdmissionTable(is_member, total_max=fixes.fd_limited_total()))
    fixes.install_accept_error_filter()
    outsider_identify = identify_handler_for(_OutsiderView(host, open_protocols), use_varint_format=True)
    open_set = frozenset(open_protocols)

    def offered(stream, handlers: dict) -> dict:
        conn = getattr(stream, "muxed_conn", None)
        if conn is not None and is_member(str(conn.peer_id)):
            return handlers
        shown = {
            p: h
            for p, h in handlers.items()
            if p in open_set or str(p).startswith(OUTSIDER_PROTOCOL_PREFIXES)
        }
        shown[IDENTIFY_PROTOCOL_ID] = outsider_identify
        return shown

    host.multiselect = fixes.BoundedMultiselect(host.multiselect.handlers, offered)
    host.multiselect_client = fixes.BoundedMultiselectClient()
    return host


class _OutsiderView:
    """The host as identify describes it to a peer that has not joined: only the protocols open
    to it (identify asks `get_mux().get_protocols()`; everything else is the host's)."""

    def __init__(self, host, open_protocols):
        self._host = host
        self._open = tuple(open_protocols)

    def get_mux(self):
        return self

    def get_protocols(self):
        shown = [
            p
            for p in self._host.multiselect.handlers
            if p is not None and str(p).startswith(OUTSIDER_PROTOCOL_PREFIXES)
        ]
        return (*self._open, *shown, IDENTIFY_PROTOCOL_ID)

    def __getattr__(self, name):
        return getattr(self._host, name)


def parse_multiaddr(text: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:  # multiaddr raises several types for bad text
        raise MeshrenderError(f"{text!r} is not a multiaddr ({exc})") from None


async def open_stream(
    host, nursery: trio.Nursery, peer: ID, protocol: str, timeout_s: float = STREAM_OPEN_TIMEOUT_S
):
    """new_stream in its own task: returns the stream, or raises trio.TooSlowError after timeout_s
    even when the peer is frozen (a late stream is closed by its task)."""
    send, recv = trio.open_memory_channel(1)
    abandoned = False

    async def opener():
        try:
            stream = await host.new_stream(peer, [TProtocol(protocol)])
        except Exception as exc:  # libp2p raises many kinds for refused or failed streams
            outcome = exc
        else:
            outcome = stream
            if abandoned:
                await _quiet_reset(stream)
                return
        try:
            send.send_nowait(outcome)
        except trio.WouldBlock:  # pragma: no cover - capacity 1, one send
            pass

    nursery.start_soon(opener)
    with trio.move_on_after(timeout_s):
        outcome = await recv.receive()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    abandoned = True
    raise trio.TooSlowError(f"no stream to {peer} within {timeout_s} s")


async def _quiet_reset(stream) -> None:
    try:
        await stream.reset()
    except Exception:  # already gone
        pass

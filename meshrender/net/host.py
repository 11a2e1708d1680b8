"""A py-libp2p host hardened for a render party, and the peer's persistent identity.

py-libp2p 0.8.1 facts that shape this (measured; see issue 4):
  * its default host also accepts /plaintext/2.0.0 (and secio, TLS), which lets a peer claim
    another's ID: we offer Noise only;
  * every connect() waits 250 ms unless max_connections_per_peer is 1;
  * TCP + Noise + yamux is the stack that keeps bytes at stream ends (QUIC lost some, mplex was slow);
  * new_stream to a frozen peer can ignore cancellation: `open_stream` runs it in its own task
    and gives up waiting after a deadline, closing the stream if it turns up later.
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
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from ..errors import MeshrenderError

log = logging.getLogger("meshrender.net")

IDENTITY_FILE = "identity.ed25519"
DIAL_TIMEOUT_S = 5.0  # a LAN peer answers in milliseconds; a dead address should not hold us long
STREAM_OPEN_TIMEOUT_S = 5.0


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


def build_host(key_pair: KeyPair):
    """TCP + Noise (only) + yamux, one connection per peer."""
    security = {NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)}
    config = ConnectionConfig(max_connections_per_peer=1, dial_timeout=DIAL_TIMEOUT_S)
    return new_host(key_pair=key_pair, sec_opt=security, muxer_preference="YAMUX", connection_config=config)


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

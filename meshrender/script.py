"""Streaming from a script: `open_session(...)` runs this machine's peer with one streaming
session and hands the session over (meshrender.streaming.StreamSession: `set_camera`,
`set_material`, `move_light`, `orbit`, `frames()`); both stop when the block ends.

    import trio
    from meshrender.script import open_session

    async def main():
        async with open_session("scene.toml", home="peer-home", party="p", secret="...") as s:
            await s.orbit(yaw_deg=15)
            async for frame in s.frames():
                ...

    trio.run(main)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable

import trio

from .session import SessionConfig
from .settings import RenderSettings
from .streaming import StreamSession


@contextlib.asynccontextmanager
async def open_session(
    scene,
    *,
    home,
    party: str,
    secret: bytes | str,
    bootstrap: list[str] | None = None,
    listen: list[str] | None = None,
    settings: RenderSettings | None = None,
    backend: str = "auto",
    threads: int | None = None,
    web: tuple[str, int] | None = None,
    allow_outside: bool = False,
    config: SessionConfig | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> AsyncIterator[StreamSession]:
    """Run a peer (joined to `party` through `bootstrap`, when given) with one session of `scene`
    (a path, a built-in name or a LoadedScene) and yield the session."""
    from .distributed import join_party
    from .node import Peer
    from .scene.load import load_scene

    desc = scene if not isinstance(scene, str | os.PathLike) else await trio.to_thread.run_sync(
        lambda: load_scene(scene, allow_outside=allow_outside))  # fmt: skip
    peer = Peer(home=home, party=party, secret=secret.encode() if isinstance(secret, str) else secret,
                listen=listen, bootstrap=bootstrap, backend=backend, threads=threads, web=web,
                on_event=on_event)  # fmt: skip
    async with trio.open_nursery() as n:
        await n.start(peer.run)
        if bootstrap:
            await join_party(peer, bootstrap=bootstrap)
        session = await peer.start_stream(StreamSession(peer, desc, settings or desc.settings, config=config))
        try:
            yield session
        finally:
            session.stop()
            n.cancel_scope.cancel()

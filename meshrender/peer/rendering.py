"""Rendering: the peer's render process, what it reports, and what the party hears of it.

How it works
  * A rendering peer keeps one `RenderProcess` (a child running the Taichi kernel) up from its
    start (`warm`): the first lease should not wait for Taichi to load, and a child that dies, is
    stopped (a cancelled unit) or fails to start is started again; `RenderProcess.start` waits
    out its back-off after failed starts. A slow first compile is progress: it is logged every
    START_NOTE_S and gossiped in the peer's status (`on_state`).
  * `backend()` is what the work loop and the coordinator ask before rendering: the child's
    backend once it is up ("cpu"/"gpu", and its name). What it reported (the backend, a GPU, a
    fallback and why) is kept here and read into the gossiped `Status` (`status_fields`). A GPU
    that runs out of memory later (on a job's scene) moves the render process to the CPU (until
    it is restarted: a new one tries the GPU again): its state change (`on_state`) carries the new
    backend, which is logged, sent as a "renderer" event with the reason, and gossiped at once.
  * `note(...)` counts a rendered unit and keeps the measured speed (Msamples/s), which the
    coordinators' schedules use; units that compiled kernels are left out of the speed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..renderproc import RenderError, RenderProcess
from .common import PeerError

if TYPE_CHECKING:
    from ..node import Peer

log = logging.getLogger("meshrender.node")

REASON_CHARS_MAX = 400  # a fallback's reason, as gossiped: a line, not a log


class Rendering:
    """The render process of a peer that renders (`proc` is None on one that does not)."""

    def __init__(self, peer: Peer, *, backend: str, threads: int | None):
        self.peer = peer
        self.proc: RenderProcess | None = None
        self.backend_name = backend  # what was asked for, until the renderer reports what it got
        self.threads = threads or os.cpu_count() or 1
        self.gpu: bool | None = None
        self.fell_back: bool | None = None
        self.reason = ""  # why the renderer runs where it does (a GPU fallback's cause)
        self.fallback = ""  # the fallback's cause for programs: "no-gpu", "gpu-oom"
        self.error: str | None = None  # the last failure to start, for humans
        self.speed: float | None = None  # measured Msamples/s, once the renderer has run
        self.units = 0  # units rendered here
        self.busy = False  # rendering (set by the work loop)

    def open(self, store_root: Path, log_path: Path | None) -> None:
        self.proc = RenderProcess(store_root, backend=self.backend_name, threads=self.threads,
                                  log_path=log_path)  # fmt: skip
        self.proc.on_state = self.on_state

    async def warm(self) -> None:
        """Keep the render process up for the peer's life (see the module docstring)."""
        r = self.proc
        while True:
            try:
                await self.backend()
            except RenderError as exc:
                wait = max(0.0, r.retry_at - trio.current_time())
                log.warning("the renderer did not start (%d in a row): %s; trying again in %.0f s",
                            r.failures, exc, wait)  # fmt: skip
                continue
            await r.wait_exited()

    async def stop(self) -> None:
        if self.proc is not None:
            await self.proc.stop()

    def on_state(self, r: RenderProcess) -> None:
        """The render process changed state or has news of a long start: log it, tell the party."""
        self.error = r.last_error or None
        if r.state in ("starting", "compiling") and "so far" in r.note:
            log.info("%s", r.note)
        elif r.state == "stopped" and r.note.startswith("the renderer exited"):
            log.warning("%s; starting it again", r.note)
        self.peer._event("renderer-state", state=r.state, note=r.note)
        if r.ready is not None:
            self._take(r.ready)
        self.peer.presence.soon()

    async def backend(self) -> tuple[str, str]:
        """("cpu" or "gpu", the backend's name), starting the render process if needed."""
        if self.proc is None:
            raise PeerError("this peer does not render")
        try:
            ready = await self.proc.start()
        except RenderError as exc:
            self.error = str(exc)
            raise
        self._take(ready)
        return ("gpu" if ready.is_gpu else "cpu"), ready.backend

    def _take(self, ready) -> None:
        """What the render process reported (its start, or a later fallback): kept and told once."""
        reason = ready.reason[:REASON_CHARS_MAX]
        known = (self.gpu, self.fell_back, self.reason, self.fallback)
        changed = known != (ready.is_gpu, ready.fell_back, reason, ready.cause)
        self.backend_name, self.gpu, self.fell_back = ready.backend, ready.is_gpu, ready.fell_back
        self.reason, self.fallback = reason, ready.cause
        if changed:
            if ready.cause == "gpu-oom":
                log.warning("rendering on the CPU: %s", reason)
            self.peer._event("renderer", backend=ready.backend, gpu=ready.is_gpu, fell_back=ready.fell_back,
                             fallback=ready.cause, reason=ready.reason, threads=ready.threads,
                             kernel_s=ready.kernel_s)  # fmt: skip
            self.peer.presence.soon()

    def note(self, rendered, unit, settings) -> None:
        """A unit was rendered here: its speed (Msamples/s, units that compiled left out) is gossiped."""
        self.units += 1
        if rendered.compile_s == 0 and rendered.seconds > 0:
            self.speed = round(unit.pixels * unit.samples(settings) / rendered.seconds / 1e6, 3)

    def status_fields(self) -> dict:
        """What the gossiped `Status` says of rendering."""
        r = self.proc
        return {
            "backend": self.backend_name,
            "fell_back": self.fell_back,
            "speed": self.speed,
            "threads": self.threads,
            "gpu": self.gpu,
            "units": self.units,
            "reason": self.reason,
            "fallback": self.fallback,
            "renderer": r.state if r is not None else "",
            "renderer_note": r.note[:REASON_CHARS_MAX] if r is not None else "",
        }

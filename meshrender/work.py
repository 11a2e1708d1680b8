"""A peer's side of a job: take leases from a coordinator, render their units, send results.

A coordinator opens one link per job (a libp2p stream, or a pair of memory channels when the
coordinating peer renders for itself) and sends `JobOffer`, then `LeaseGrant`s and `LeaseRevoke`s,
and `JobEnd` when the job is done or cancelled. `serve_job` runs the sans-IO `WorkerJob` on it:
  * a reader feeds leases and revokes in; a lease this peer cannot render (another backend class,
    a scene it cannot get) is answered with `LeaseRefused` and the reason;
  * a driver sends `Beat` heartbeats while a lease is held and hands units to the render task;
  * the render task fetches the scene from the party before the first unit (heartbeats meanwhile
    say "preparing", so the coordinator does not mistake the fetch for a stall), renders each unit
    in the peer's render process and sends `UnitDone` with the exact float32 sums;
  * `JobEnd`, a closed link or a lost coordinator stop everything at once: a unit in the kernel is
    stopped by killing the render process (a cancel frees the worker within a second).
  * A streaming session (meshrender.streaming) sends a new `JobOffer` on the same link for each
    scene version: leases granted after it render that version's scene and settings. The old
    version's leases are revoked by then; a unit of it already in the kernel finishes (one pass
    of one bucket: milliseconds) and its result is sent, and dropped by the coordinator as stale,
    so an edit never costs a render-process restart.
  * A render process that is not ready (still compiling on a cold cache, restarting after a
    crash) is not this job's problem to wait for: the link is closed at once with the reason, the
    coordinator takes back whatever the lease held (no strike) and offers the job again once this
    peer's gossiped status says its renderer is ready. A unit that cannot render here for good (its
    scene cannot be fetched, the render process says the unit is wrong) is refused instead.
"""

from __future__ import annotations

import logging
import math

import trio

from .protocol import (
    CHUNK_WIRE_BYTES_MAX,
    Beat,
    JobEnd,
    JobOffer,
    LeaseGrant,
    LeaseRefused,
    LeaseRevoke,
    Msg,
    RemoteProtocolError,
    UnitDone,
)
from .renderproc import RendererDown, RenderError
from .schedule import Heartbeat, RenderNext, WorkerJob

log = logging.getLogger("meshrender.work")


def _aov_that_fits(rendered) -> bytes:
    """The unit's AOV sums, or b"" when with them its result would not fit one stored chunk (the
    coordinator then denoises that frame from colour alone)."""
    if len(rendered.sums) + len(rendered.aov_sums) + RESULT_SLACK_BYTES > CHUNK_WIRE_BYTES_MAX:
        return b""
    return rendered.aov_sums

OFFER_TIMEOUT_S = 10.0  # a coordinator sends its offer right after opening the link
LINK_CHANNEL_MSGS = 64  # messages queued on a memory link before the sender waits
RESULT_SLACK_BYTES = 64 << 10  # a stored result's fields beside its sums (unit, counts, framing)
FINISH_UNIT_WAIT_S = 5.0  # a JobEnd that lets the unit finish waits this long, then stops it anyway
READY_WAIT_S = 5.0  # an offer waits this long for a renderer that is (re)starting, then the link closes


class MemoryLink:
    """One end of an in-process link: the coordinating peer's own worker talks through this."""

    def __init__(self, send: trio.MemorySendChannel, receive: trio.MemoryReceiveChannel):
        self._send, self._receive = send, receive

    async def send(self, msg: Msg) -> None:
        await self._send.send(msg)

    async def receive(self) -> Msg | None:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            return None

    async def close(self) -> None:
        await self._send.aclose()


def memory_link_pair() -> tuple[MemoryLink, MemoryLink]:
    a_send, b_receive = trio.open_memory_channel(LINK_CHANNEL_MSGS)
    b_send, a_receive = trio.open_memory_channel(LINK_CHANNEL_MSGS)
    return MemoryLink(a_send, a_receive), MemoryLink(b_send, b_receive)


class _Wake:
    """A level-triggered wake-up for the driver: set by anyone, cleared by the driver."""

    def __init__(self):
        self.event = trio.Event()

    def set(self) -> None:
        self.event.set()

    async def wait_until(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await self.event.wait()
        self.event = trio.Event()


async def serve_job(peer, link, coordinator: str) -> dict:
    """Work one job for `coordinator` over `link` until it ends; returns what was done."""
    with trio.fail_after(OFFER_TIMEOUT_S):
        offer = await link.receive()
    if offer is None:
        return {"units": 0, "ended": "closed before the offer"}
    if not isinstance(offer, JobOffer):
        raise RemoteProtocolError(f"a job link opened with {type(offer).__name__}, not JobOffer")
    state = {"units": 0, "ended": "", "refused": "", "preparing": "", "rendering": False, "offers": 1}
    lease_offer: dict[int, JobOffer] = {}  # lease id -> the offer (scene version) it was granted under
    with trio.move_on_after(READY_WAIT_S):  # a restart on a warm cache takes a few seconds
        while not peer.rendering.proc.running():
            await trio.sleep(0.1)
    if not peer.rendering.proc.running():
        r = peer.rendering.proc
        state["ended"] = f"renderer not ready: {r.note or r.state}"
        await link.close()
        return state
    klass, backend_name = await peer.rendering.backend()
    job = WorkerJob(trio.current_time())
    wake = _Wake()
    todo_send, todo_receive = trio.open_memory_channel[RenderNext](1)

    async def refuse(lease_id: int, reason: str) -> None:
        job.on_revoke(lease_id, trio.current_time())
        state["refused"] = reason
        await link.send(LeaseRefused(lease_id=lease_id, reason=reason))

    async def reader(cancel: trio.CancelScope) -> None:
        nonlocal offer
        while True:
            msg = await link.receive()
            now = trio.current_time()
            if msg is None or isinstance(msg, JobEnd):
                state["ended"] = "coordinator closed the link" if msg is None else msg.reason
                if state["rendering"] and msg is not None and msg.finish_unit:
                    with trio.move_on_after(FINISH_UNIT_WAIT_S):  # its answer read: the pipe stays in step
                        while state["rendering"]:
                            await trio.sleep(0.005)
                if state["rendering"]:
                    await peer.rendering.proc.stop()  # the unit in the kernel stops too
                cancel.cancel()
                return
            if isinstance(msg, JobOffer):  # a session's next scene version: later leases are of it
                offer = msg
                state["refused"] = ""  # a scene that could not be fetched may be followed by one that can
                state["offers"] += 1
            elif isinstance(msg, LeaseGrant):
                if klass != offer.backend:
                    await refuse(msg.lease_id, f"this job renders on {offer.backend}; this peer on {klass}")
                elif state["refused"]:
                    await refuse(msg.lease_id, state["refused"])
                else:
                    job.on_lease(msg.lease_id, list(msg.units), now + msg.due_in_s, now)
                    held = set(job.lease_ids)
                    for lid in [lid for lid in lease_offer if lid not in held]:
                        del lease_offer[lid]  # only leases still held keep their offer: bounded by them
                    lease_offer[msg.lease_id] = offer
                    peer._event("lease", coordinator=coordinator, job=offer.job_id, lease_id=msg.lease_id,
                                units=len(msg.units))  # fmt: skip
            elif isinstance(msg, LeaseRevoke):
                job.on_revoke(msg.lease_id, now)
            else:
                raise RemoteProtocolError(f"{type(msg).__name__} on a job link")
            wake.set()

    async def render(cancel: trio.CancelScope) -> None:
        async for step in todo_receive:
            if step.lease_id not in job.lease_ids:
                job.started(step.unit, trio.current_time())  # revoked meanwhile: nothing to do
                job.finished(step.unit, trio.current_time())
                wake.set()
                continue
            off = lease_offer.get(step.lease_id, offer)
            if not peer.store.has_scene(off.scene_id):
                state["preparing"] = "fetching the scene"
                job.preparing(True)
                wake.set()
                try:
                    await peer.fetch_scene(off.scene_id)
                except Exception as exc:  # no holder, a timeout, a full disk: say why and stop
                    reason = f"cannot get scene {off.scene_id[:16]}: {exc}"
                    job.started(step.unit, trio.current_time())
                    job.finished(step.unit, trio.current_time())
                    for lid in job.lease_ids or (step.lease_id,):
                        await refuse(lid, reason)
                    wake.set()
                    continue
            compiling = peer.rendering.proc.loaded_scene != off.scene_id
            state["preparing"] = "compiling the kernel" if compiling else ""
            job.preparing(compiling)  # the first unit of a scene pays for loading and compiling
            job.started(step.unit, trio.current_time())
            state["rendering"] = True
            peer.rendering.busy = True
            try:
                result, rendered = await peer.rendering.proc.render(off.scene_id, off.settings, step.unit,
                                                                    urgent=off.interactive)  # fmt: skip
            except RendererDown as exc:  # it restarts (Rendering.warm): the job gets us back then
                state["rendering"] = False
                state["ended"] = state["ended"] or f"renderer down: {exc}"
                job.finished(step.unit, trio.current_time())
                cancel.cancel()
                return
            except RenderError as exc:
                state["rendering"] = False
                job.finished(step.unit, trio.current_time())
                await refuse(step.lease_id, f"render failed: {exc}")
                wake.set()
                continue
            finally:
                state["rendering"] = False
                peer.rendering.busy = False
            state["preparing"] = ""
            job.preparing(False)
            now = trio.current_time()
            job.progress(step.unit.pixels * step.unit.samples(off.settings), now)
            job.finished(step.unit, now)
            peer.rendering.note(rendered, step.unit, off.settings)
            await link.send(
                UnitDone(
                    lease_id=step.lease_id,
                    unit=step.unit,
                    sample_counts=result.sample_counts,
                    sums=rendered.sums,
                    seconds=rendered.seconds,
                    backend=backend_name,
                    aov_sums=_aov_that_fits(rendered),
                )
            )
            state["units"] += 1
            wake.set()

    try:
        async with trio.open_nursery() as n:
            n.start_soon(reader, n.cancel_scope)
            n.start_soon(render, n.cancel_scope)
            while True:
                now = trio.current_time()
                for action in job.poll(now):
                    if isinstance(action, Heartbeat):
                        await link.send(
                            Beat(
                                lease_ids=list(action.lease_ids),
                                samples_done=action.samples_done,
                                rendering=action.rendering,
                                preparing=state["preparing"],
                            )
                        )
                    else:
                        todo_send.send_nowait(
                            action
                        )  # one at a time: poll hands out the next after `finished`
                deadline = job.next_deadline()
                await wake.wait_until(math.inf if deadline is None else deadline)
    finally:
        with trio.CancelScope(shield=True):
            await link.close()
    return state

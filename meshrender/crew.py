"""The party members working for one coordinator (a queued job or a streaming session), each over
one job link: who is offered the work, when again, and the tasks that carry its messages.

`Crew(peer, label, events, offer=..., on_join=...)` runs inside the coordinator's nursery
(`start(nursery, done)`):
  * it offers the work to every member that renders, and to this peer's own worker through an
    in-process link; members that join later get an offer at once. A member whose gossiped status
    says its renderer is not ready (starting, compiling kernels on a cold cache, failed) gets its
    offer once it is; one that dropped out for a reason that passes (its renderer restarted, a
    link failed) is offered the work again, backing off (REOFFER_S); one that misbehaved never is;
  * each link has its own sender task and outbox (a slow member never holds up the others; one
    too far behind is dropped) and a reader task. Both put what happens on the coordinator's event
    channel as `("msg", peer, msg)`, `("gone", peer, reason)` and `("poke", peer, None)`; the
    coordinator decides, and calls `drop` to take a member out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .backoff import Backoff
from .protocol import LEASE_DUE_S_MAX, LeaseGrant, LeaseRevoke, Msg
from .work import memory_link_pair, serve_job

log = logging.getLogger("meshrender.crew")

OUTBOX_MSGS = 1024  # messages waiting for one slow link; past this the member is dropped from the work
MEMBER_SCAN_S = 0.25  # how often membership is compared with the workers (joins get work)
REOFFER_S = 2.0  # a member out of the work for a passing reason is offered it again after this...
REOFFER_MAX_S = 60.0  # ...doubling each time, up to this
RENDERER_NOT_READY = ("starting", "compiling", "failed", "stopped")  # Status.renderer: no offer yet
BACKEND_WAIT_S = 60.0  # work of class "any" waits this long for our own renderer to say cpu or gpu
SEND_TIMEOUT_S = 10.0  # one message to a member; a member that takes longer is dropped from the work


async def handle_events(events: trio.MemoryReceiveChannel, deadline: float | None, handle) -> None:
    """Wait for one event (until `deadline`, or a second when there is none), then `handle` it and
    every event already queued behind it: the coordinator then polls its core once for all."""
    with trio.move_on_at(deadline if deadline is not None else trio.current_time() + 1.0):
        handle(*await events.receive())
        while True:
            try:
                item = events.receive_nowait()
            except trio.WouldBlock:
                break
            handle(*item)


class Worker:
    def __init__(self, peer: str, link):
        self.peer = peer
        self.link = link
        self.outbox_send, self.outbox_receive = trio.open_memory_channel[Msg](OUTBOX_MSGS)
        self.flushed = trio.Event()  # its sender has sent everything queued and closed the link


async def backend_class(peer, wanted: str, render_self: bool, label: str) -> str:
    """The one backend class ("cpu" or "gpu") the work renders on: results are bit-identical only
    within one. `wanted` is the job's requirement ("cpu", "gpu" or "any")."""
    if wanted in ("cpu", "gpu"):
        return wanted
    mine = "cpu"
    if render_self:  # waiting, not starting: peer.rendering.Rendering.warm starts it
        with trio.move_on_after(BACKEND_WAIT_S):
            while not peer.rendering.proc.running():
                await trio.sleep(0.1)
        if peer.rendering.proc.running():
            mine = (await peer.rendering.backend())[0]
        else:
            log.warning("%s: this peer's renderer is not ready (%s): the class is decided without it",
                        label, peer.rendering.proc.note)  # fmt: skip
    if mine == "gpu" or any((s or {}).get("gpu") for s in peer.statuses.values()):
        return "gpu"
    return "cpu"


class Crew:
    def __init__(
        self,
        peer,
        label: str,
        events: trio.MemorySendChannel,
        *,
        offer: Callable[[], Msg],
        on_join: Callable[[str], None],
        render_self: bool = True,
        open_link=None,
    ):
        self.peer = peer
        self.label = label  # "job 1a2b3c4d5e6f", "session 9f8e7d6c": names the work in the log
        self.events = events
        self.offer = offer  # the message every new link starts with
        self.on_join = on_join  # a worker was added: the coordinator's core hears of it
        self.render_self = render_self
        self.open_link = open_link or peer.open_job_link
        self.workers: dict[str, Worker] = {}
        self.rejected: dict[str, str] = {}  # peer -> why it is not (or no longer) working on this
        self._reoffer: dict[str, Backoff] = {}  # peers out for a passing reason: when to offer again
        self._never: set[str] = set()  # peers out for misbehaving: not offered again
        self._renderer_seen: dict[str, str] = {}  # member -> its renderer's state in its last status
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery, done: Callable[[], bool]) -> None:
        """Offer the work until `done()`: our own worker (when we render) and every member."""
        self._nursery = nursery
        if self.render_self:
            nursery.start_soon(self._serve_self, done)
        nursery.start_soon(self._scan_members)

    def never(self, peer: str) -> None:
        self._never.add(peer)

    def may_offer(self, peer: str) -> bool:
        """Not out of this work for good (misbehaved, refused), and past its re-offer back-off."""
        if peer in self._never:
            return False
        b = self._reoffer.get(peer)
        return b is None or b.ready(trio.current_time())

    def out_for_now(self, peer: str, reason: str) -> None:
        self.rejected[peer] = reason
        self._reoffer.setdefault(peer, Backoff(REOFFER_S, REOFFER_MAX_S)).failed(trio.current_time())

    def send(self, peer: str, msg: Msg) -> None:
        w = self.workers.get(peer)
        if w is None:
            return
        try:
            w.outbox_send.send_nowait(msg)
        except trio.WouldBlock:
            self.events.send_nowait(("gone", w.peer, "too far behind on its messages"))
        except trio.ClosedResourceError:
            pass

    def grant(self, peer: str, lease_id: int, units, deadline: float, now: float) -> None:
        """Send a lease of `units` due at `deadline` (the wire bounds how far ahead that may be)."""
        due_s = min(LEASE_DUE_S_MAX, max(0.0, deadline - now))
        self.send(peer, LeaseGrant(lease_id=lease_id, units=list(units), due_in_s=due_s))

    def revoke(self, peer: str, lease_id: int, reason: str) -> None:
        self.send(peer, LeaseRevoke(lease_id=lease_id, reason=reason))

    def penalize(self, peer: str, reason: str, **where) -> None:
        """The core says `peer` misbehaved: the peer's penalty book and a `penalty` event."""
        self.peer._penalize(peer, f"{self.label}: {reason}", ban=False)
        self.peer._event("penalty", **where, peer=peer, reason=reason)

    def send_all(self, msg: Msg) -> None:
        for peer in list(self.workers):
            self.send(peer, msg)

    def drop(self, who: str, reason: str, *, penalize: bool) -> bool:
        """Take `who` out (its link closes once its outbox is sent); False when it was not in."""
        w = self.workers.pop(who, None)
        if w is None:
            return False
        if penalize or reason.startswith("convicted"):
            self.rejected[who] = reason
            self._never.add(who)
        else:  # gone, a link failure, its renderer restarting: it may come back
            self.out_for_now(who, reason)
        w.outbox_send.close()
        return True

    async def close(self, wait_s: float) -> None:
        """Close every link once what is queued on it is sent (waiting at most `wait_s`)."""
        for w in list(self.workers.values()):
            w.outbox_send.close()
        with trio.move_on_after(wait_s):
            for w in list(self.workers.values()):
                await w.flushed.wait()

    # ------------------------------------------------------------------ links
    def _add(self, peer_id: str, link) -> None:
        w = Worker(peer_id, link)
        self.workers[peer_id] = w
        self.send(peer_id, self.offer())
        self._nursery.start_soon(self._sender, w)
        self._nursery.start_soon(self._reader, w)
        self.on_join(peer_id)
        self.events.send_nowait(("poke", peer_id, None))

    async def _serve_self(self, done: Callable[[], bool]) -> None:
        """This peer's own worker, on an in-process link: it joins once our render process is ready,
        and again after the renderer died and came back (peer.rendering.Rendering.warm restarts it)."""
        me = self.peer.peer_id
        while not done():
            if me in self.workers or not self.peer.rendering.proc.running() or not self.may_offer(me):
                await trio.sleep(MEMBER_SCAN_S)
                continue
            mine, theirs = memory_link_pair()
            self._add(me, mine)
            try:
                ended = await serve_job(self.peer, theirs, me)
            except Exception as exc:  # our own worker failing must not end the work: others render
                log.warning("%s: this peer's own worker stopped: %s", self.label, exc)
                self.events.send_nowait(("gone", me, f"own worker failed: {exc}"))
            else:
                if ended["ended"].startswith("renderer"):
                    log.warning("%s: this peer's own worker: %s", self.label, ended["ended"])
            await trio.sleep(MEMBER_SCAN_S)  # its link's end reaches the loop first

    async def _scan_members(self) -> None:
        opening: set[str] = set()

        async def open_link(member: str) -> None:
            try:
                link = await self.open_link(member)
            except Exception as exc:  # not a renderer, or gone: no worker for this work
                log.debug("%s: no job link to %s: %s", self.label, member, exc)
                self.out_for_now(member, f"no job link: {type(exc).__name__}: {exc}")
            else:
                if member in self.peer.members and member not in self.workers:
                    self._add(member, link)
                else:
                    await link.close()
            finally:
                opening.discard(member)

        while True:
            for member, status in list(self.peer.member_statuses().items()):
                renderer = status.get("renderer", "") if status is not None else ""
                if renderer == "ready" and self._renderer_seen.get(member, "ready") != "ready":
                    self._reoffer.pop(member, None)  # its renderer just came up: offer it now
                self._renderer_seen[member] = renderer
                if member in self.workers or member in opening or not self.may_offer(member):
                    continue
                if status is not None and not status.get("renders", True):
                    continue
                if renderer in RENDERER_NOT_READY:
                    continue  # offered once its status says the renderer is ready
                opening.add(member)
                self._nursery.start_soon(open_link, member)
            for p in list(self.workers):
                if p != self.peer.peer_id and p not in self.peer.members:
                    self.events.send_nowait(("gone", p, "left the party"))
            await trio.sleep(MEMBER_SCAN_S)

    async def _sender(self, w: Worker) -> None:
        try:
            async for msg in w.outbox_receive:
                with trio.fail_after(SEND_TIMEOUT_S):
                    await w.link.send(msg)
        except Exception as exc:  # reset, timeout: the member is lost to this work
            self.events.send_nowait(("gone", w.peer, f"link failed: {type(exc).__name__}"))
        finally:
            with trio.CancelScope(shield=True):
                await w.link.close()
            w.flushed.set()

    async def _reader(self, w: Worker) -> None:
        try:
            while True:
                msg = await w.link.receive()
                if msg is None:
                    self.events.send_nowait(("gone", w.peer, "closed its job link"))
                    return
                self.events.send_nowait(("msg", w.peer, msg))
        except trio.WouldBlock:
            log.warning("%s: event queue full", self.label)
        except Exception as exc:
            self.events.send_nowait(("gone", w.peer, f"{type(exc).__name__}: {exc}"))

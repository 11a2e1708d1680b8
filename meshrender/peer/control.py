"""Control and job links: the streams a job runs over, between members only.

How it works
  * `/meshrender/control/1` (a peer that runs its queue answers it): one request per stream,
    read within CONTROL_REQUEST_S, answered by meshrender.service.handle_control; `control` is the
    asking side, and after a FetchResults answer it hands the result files on, piece by piece.
  * `/meshrender/jobs/1` (a peer that renders answers it): a coordinator opens a job link
    (`open_job_link`) to each member and leases it units; the member serves the job
    (meshrender.work.serve_job) until the coordinator ends it, goes, or idles JOB_LINK_IDLE_S.
  * A stream from a non-member or a banned peer is reset unanswered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from libp2p.peer.id import ID

from ..net.host import open_stream
from ..net.streams import MsgLink, read_msg, write_msg
from ..work import serve_job
from .common import IDLE_STREAM_TIMEOUT_S, PROTO_CONTROL, PROTO_JOBS, PeerError, close_stream, reset_stream

if TYPE_CHECKING:
    from ..node import Peer

CONTROL_REQUEST_S = 10.0  # a control request arrives within this after its stream opens
CONTROL_REPLY_S = 660.0  # a submit's answer waits for the scene to be fetched (service.SCENE_FETCH_S)
JOB_LINK_IDLE_S = 3600.0  # a worker may wait this long between leases; its coordinator's loss ends it sooner


class Control:
    """Both ends of control requests and job links."""

    def __init__(self, peer: Peer):
        self.peer = peer

    async def open_job_link(self, member: str) -> MsgLink:
        p = self.peer
        stream = await open_stream(p.host, p._nursery, ID.from_base58(member), PROTO_JOBS)
        return MsgLink(stream, IDLE_STREAM_TIMEOUT_S)

    async def on_job(self, stream, remote: str) -> None:
        p = self.peer
        if remote not in p.members or remote in p.banned:
            await reset_stream(stream)
            return
        link = MsgLink(stream, JOB_LINK_IDLE_S)
        try:
            done = await serve_job(p, link, remote)
        except Exception as exc:  # the coordinator died or broke the link: its job is over here too
            p._event("job-served", coordinator=remote, units=0, ended=f"link failed: {type(exc).__name__}")
            raise
        p._event("job-served", coordinator=remote, units=done["units"], ended=done["ended"])

    async def on_control(self, stream, remote: str) -> None:
        from ..service import handle_control

        p = self.peer
        if remote not in p.members or remote in p.banned or p.runner is None:
            await reset_stream(stream)
            return
        msg = await read_msg(stream, CONTROL_REQUEST_S)
        if msg is not None:

            async def send(reply) -> None:
                await write_msg(stream, reply)

            await handle_control(p, p.runner, msg, remote, send)
        await close_stream(stream)

    async def control(self, member: str, request, on_piece: Callable | None = None):
        """Send one control request to `member` and return its answer (a JobList or an Error).
        The result files that follow a FetchResults answer go, piece by piece, to `on_piece`."""
        from ..protocol import JobList, ResultPiece

        p = self.peer
        stream = await open_stream(p.host, p._nursery, ID.from_base58(member), PROTO_CONTROL)
        try:
            await write_msg(stream, request)
            answer = await read_msg(stream, CONTROL_REPLY_S)
            if answer is None:
                raise PeerError(f"{member[-12:]} closed the control stream without an answer")
            files_follow = isinstance(answer, JobList) and answer.jobs and answer.jobs[0].state == "done"
            while on_piece is not None and files_follow:
                piece = await read_msg(stream)
                if not isinstance(piece, ResultPiece):
                    raise PeerError(f"{member[-12:]} ended the result files early ({type(piece).__name__})")
                on_piece(piece)
                if piece.last:
                    break
            return answer
        finally:
            await close_stream(stream)

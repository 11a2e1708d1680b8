"""What the command line (`cli`, `cli_jobs`) and the TUI share: this machine's store and queue, and
which commands run a peer (and so take the home's lock before they open anything).

It sits below all three and imports none of them, so no import runs in a circle. Heavy modules
(trio, the coordinator, the scene loaders) are imported inside the functions: the CLI's start
stays quick.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from .home import HomeLock, meshrender_home

CLIENT_HOME = "client"  # under $MESHRENDER_HOME: a `--to` client's own identity and store
JOB_COMMANDS = ("submit", "jobs", "cancel", "results")  # queue commands; with --to they run a peer


def open_store(home: str | Path | None):
    """This machine's chunk store (under `home`, default $MESHRENDER_HOME), with its quota."""
    from .home import store_dir, store_quota_bytes
    from .store.chunkstore import ChunkStore

    return ChunkStore(store_dir(home), quota_bytes=store_quota_bytes())


def local_db(where):
    """This machine's queue: `where` is parsed arguments (their --home) or a home folder."""
    from .distributed import jobs_db_path
    from .jobs import JobDB

    home = where.home if isinstance(where, argparse.Namespace) else where
    return JobDB(jobs_db_path(meshrender_home(home)))


def job_info(rec):
    from .service import job_info  # lazily: the CLI's start stays free of trio and the coordinator

    return job_info(rec)


def submit_compiled(home, scene, settings, frames: tuple[int, int], *, backend: str = "any",
                    priority: int = 0, submitter: str = ""):  # fmt: skip
    """Put a compiled scene in this machine's store and queue a job of it; its JobInfo."""
    from .jobs import JobSpec
    from .service import submit_local
    from .store.scenes import import_scene

    with open_store(home) as store, local_db(home) as db:
        spec = JobSpec(scene_id=import_scene(store, scene).scene_id, settings=settings, first_frame=frames[0],
                       last_frame=frames[1], backend=backend)  # fmt: skip
        return job_info(submit_local(db, store, spec, priority=priority, submitter=submitter))


def peer_home(args: argparse.Namespace) -> Path | None:
    """The home whose peer this command runs, or None for one that runs no peer of its own here.

    `peer` runs one (on a terminal without --headless it opens the TUI instead, which attaches to a
    running peer or starts one whose `Peer.run` takes the lock); `render --party` and `store fetch`
    run one; `submit/jobs/cancel/results --to` run a client peer in their own `client/` home.
    `demo` makes fresh homes of its own. The queue commands without --to are queue clients.
    """
    command = getattr(args, "command", None)
    home = meshrender_home(getattr(args, "home", None))
    if command == "render" and getattr(args, "party", None):
        return home
    if command == "stream":
        return home
    if command == "store" and getattr(args, "store_command", None) == "fetch":
        return home
    if command == "peer" and (args.headless or args.json or not sys.stdout.isatty()):  # as cmd_peer decides
        return home
    if command in JOB_COMMANDS and getattr(args, "to", None):
        return home / CLIENT_HOME
    return None


def peer_home_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The home's lock for a command that runs a peer (raises HomeInUse if another peer has it)."""
    home = peer_home(args)
    return HomeLock(home) if home is not None else contextlib.nullcontext()

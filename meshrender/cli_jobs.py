"""`meshrender submit | jobs | cancel | results`: a peer's job queue from the command line.

Without `--to` they work on this machine's queue (`$MESHRENDER_HOME/jobs.sqlite` and its store),
whether or not a peer runs here: a running peer (`meshrender peer`) picks a submitted job up within
half a second and sees a cancel within a fifth of one. With `--to MULTIADDR` (and the party's name
and secret) they join the party as a client that does not render, ask that peer over
`/meshrender/control/1`, and leave: a submitted scene is fetched by that peer from this client
before the answer comes, so the client may disconnect as soon as it has the job id. That client
is a peer of its own (identity and store in `$MESHRENDER_HOME/client`), so it holds that folder's
lock while it runs: one `--to` command at a time per home (`meshrender.home.HomeLock`).

The helpers these commands share with `cli` and the TUI live in `cli_common`, below all three.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import time
from pathlib import Path

import msgspec

from .cli_common import CLIENT_HOME, job_info, local_db, open_store, submit_compiled
from .errors import MeshrenderError


def add_parsers(sub, party_args, settings_args) -> None:
    s = sub.add_parser("submit", help="put a render job on a peer's queue; prints its id")
    s.add_argument("scene", help="scene .toml, a mesh file, or a built-in name (cornell)")
    s.add_argument(
        "--allow-outside", action="store_true", help="let the scene read files outside its own folder tree"
    )
    s.add_argument("--priority", type=int, default=0, help="higher runs first (-1000..1000, default 0)")
    s.add_argument("--frames", type=_frames, metavar="A..B", help="frame range (default: the scene's)")
    s.add_argument("--backend", choices=("any", "cpu", "gpu"), default="any", help="backend class")
    settings_args(s)
    j = sub.add_parser("jobs", help="a peer's queue: running, queued and finished jobs")
    c = sub.add_parser("cancel", help="cancel a queued or running job (workers stop within a second)")
    c.add_argument("job", help="job id or a unique prefix (4+ hex digits)")
    r = sub.add_parser("results", help="where a finished job's images are; with --to, fetch them")
    r.add_argument("job", help="job id or a unique prefix (4+ hex digits)")
    r.add_argument("-o", "--output", metavar="DIR", help="copy the files here (default with --to: ./JOB/)")
    for p in (s, j, c, r):
        p.add_argument("--to", metavar="MULTIADDR", help="a party peer (.../p2p/ID); default: here")
        p.add_argument("--party", help="party name (with --to)")
        p.add_argument("--secret", help="party secret (or --secret-file, or $MESHRENDER_SECRET)")
        p.add_argument("--secret-file", help="file holding the party secret")
        p.add_argument("--listen", action="append", metavar="MULTIADDR", help="default /ip4/127.0.0.1/tcp/0")
        p.add_argument("--home", help="peer state folder (default $MESHRENDER_HOME)")
        p.add_argument("--json", action="store_true", help="print JSON on stdout")


def _frames(text: str) -> tuple[int, int]:
    try:
        a, _, b = text.partition("..")
        first, last = int(a), int(b) if b else int(a)
    except ValueError:
        raise argparse.ArgumentTypeError(f"frames {text!r}: A..B or N, e.g. 0..47") from None
    if first < 0 or last < first:
        raise argparse.ArgumentTypeError(f"frames {text!r}: 0 <= A <= B")
    return first, last


# ---------------------------------------------------------------------------- talking to a peer


def _remote(args, request, *, scene=None, on_piece=None):
    """Join the party as a non-rendering client, send `request` to the `--to` peer, return its answer."""
    import trio

    from .distributed import join_party, notice_printer, watch_progress
    from .home import meshrender_home
    from .node import Peer, read_secret
    from .protocol import Error

    if not args.party:
        raise MeshrenderError("--to needs --party NAME (and --secret or --secret-file)")
    target = args.to.rstrip("/").rsplit("/p2p/", 1)[-1] if "/p2p/" in args.to else ""
    if not target:
        raise MeshrenderError(f"--to {args.to}: the address must end in /p2p/<peer id>")
    secret = read_secret(args.secret, args.secret_file)
    home = meshrender_home(args.home) / CLIENT_HOME
    if scene is not None:  # the client's store holds the scene; the peer fetches it from there
        from .store.scenes import import_scene

        with open_store(home) as store:
            import_scene(store, scene)
    peer = Peer(home=home, party=args.party, secret=secret, listen=args.listen, bootstrap=[args.to],
                render=False)  # fmt: skip
    answer = None

    async def main():
        nonlocal answer
        async with trio.open_nursery() as n:
            await n.start(peer.run)
            await join_party(peer, bootstrap=[args.to])
            if target not in peer.members:
                raise MeshrenderError(f"{args.to} did not let us into party {args.party!r}")

            def waiting():  # a submit waits while the peer fetches the scene from us: bytes out move
                moved = peer.transfers["bytes_out"] + peer.transfers["bytes_in"]
                return moved, f"waiting for {target[-12:]} to answer ({moved:,} bytes moved so far)"

            n.start_soon(lambda: watch_progress(waiting, on_notice=notice_printer(args.json)))
            answer = await peer.control(target, request, on_piece)
            n.cancel_scope.cancel()

    trio.run(main)
    if isinstance(answer, Error):
        raise MeshrenderError(f"{target[-12:]}: {answer.reason}")
    return answer.jobs


# ---------------------------------------------------------------------------- the commands


def cmd_submit(args: argparse.Namespace, settings_of) -> int:
    from .protocol import SubmitJob
    from .scene.compile import compile_scene
    from .scene.load import load_scene

    scene = compile_scene(load_scene(args.scene, allow_outside=args.allow_outside))
    settings = settings_of(args, scene.settings)
    first, last = args.frames or scene.frames
    if args.to:
        from .store.manifest import chunk_scene

        scene_id = chunk_scene(scene).scene_id
        request = SubmitJob(scene_id=scene_id, settings=settings, first_frame=first, last_frame=last,
                            backend=args.backend, priority=args.priority)  # fmt: skip
        (info,) = _remote(args, request, scene=scene)
    else:
        info = submit_compiled(args.home, scene, settings, (first, last), backend=args.backend,
                               priority=args.priority, submitter="cli")  # fmt: skip
    if args.json:
        print(json.dumps(msgspec.to_builtins(info)))
    else:
        where = args.to or "this machine's queue"
        print(f"job {info.id} {info.state} on {where} (priority {info.priority})")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from .protocol import ListJobs

    if args.to:
        infos = _remote(args, ListJobs())
    else:
        from .service import listing

        with local_db(args) as db:
            infos = [job_info(r) for r in listing(db)]
    if args.json:
        print(json.dumps([msgspec.to_builtins(i) for i in infos]))
        return 0
    if not infos:
        print("no jobs")
        return 0
    print(f"{'JOB':14} {'STATE':10} {'PRI':>5} {'PROGRESS':>12} {'FRAMES':>11}  SUBMITTED")
    for i in infos:
        progress = f"{i.units_done}/{i.units_total}" if i.units_total else "-"
        frames = f"{i.first_frame}..{i.last_frame}"
        when = datetime.datetime.fromtimestamp(i.submitted_s).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{i.id[:12]:14} {i.state:10} {i.priority:>5} {progress:>12} {frames:>11}  {when}"
        if i.error:
            line += f"  ({i.error[:80]})"
        print(line)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .protocol import CancelJob

    if args.to:
        (info,) = _remote(args, CancelJob(job=args.job.lower()))
    else:
        with local_db(args) as db:
            info = job_info(db.cancel(args.job.lower(), now=time.time()))
    if args.json:
        print(json.dumps(msgspec.to_builtins(info)))
    else:
        print(f"job {info.id} cancelled")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from .protocol import FetchResults

    written: list[str] = []
    if args.to:
        out = Path(args.output or args.job.lower())
        files: dict[str, object] = {}

        def on_piece(piece) -> None:
            f = files.get(piece.name)
            if f is None:
                out.mkdir(parents=True, exist_ok=True)
                f = files[piece.name] = open(out / piece.name, "wb")
                written.append(str(out / piece.name))
            f.write(piece.data)
            if piece.end_of_file:
                f.close()

        try:
            (info,) = _remote(args, FetchResults(job=args.job.lower()), on_piece=on_piece)
        finally:
            for f in files.values():
                f.close()
    else:
        with local_db(args) as db:
            rec = db.get(args.job.lower())
        info = job_info(rec)
        paths = [Path(p) for p in rec.outputs]  # frame images, then job.json
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise MeshrenderError(f"job {rec.id[:12]}: result files are gone: {', '.join(missing)}")
        if args.output:
            Path(args.output).mkdir(parents=True, exist_ok=True)
            written = [shutil.copy2(p, Path(args.output) / p.name) for p in paths]
        else:
            written = [str(p) for p in paths]
    if info.state != "done":
        raise MeshrenderError(
            f"job {info.id[:12]} is {info.state} ({info.units_done}/{info.units_total} units)"
            + (f": {info.error}" if info.error else "")
        )
    if args.json:
        print(json.dumps({**msgspec.to_builtins(info), "files": [str(w) for w in written]}))
    else:
        for w in written:
            print(w)
    return 0

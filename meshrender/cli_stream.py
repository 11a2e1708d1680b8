"""`meshrender stream SCENE`: run this machine's peer with a streaming session of SCENE, re-render
it across the party whenever the scene file (or any file it names) is saved, and report previews.

How it works: the scene is loaded once and a `streaming.StreamSession` renders it; a watcher
(`watchfiles`, the Rust `notify` crate's native file events) watches the folders of the files the
scene read (an editor that saves by writing a new file and renaming it over the old one replaces
the inode; the folder sees it) and reloads the scene when one of those files changes, STEP_MS
after the last change of a burst. A file saved half-way fails to load: the line says why and the
session keeps the version it has. The web page (default 127.0.0.1:8470) shows the Stream view;
`-o PREVIEW.png` keeps the newest preview on disk; lines (or `--json` objects) say each version,
its first preview and its convergence. Ctrl-C ends the session and the peer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from .errors import MeshrenderError

STEP_MS = 10  # writes this close (an exporter's .gltf and .bin) are one reload, this long after the last
DEBOUNCE_MS = 400  # ...but a writer that never pauses still reloads this often
PREVIEW_WRITE_S = 0.5  # -o is rewritten at most this often (a PNG encode per frame would slow the peer)
REPORT_S = 1.0  # a progress line at most this often within one version
SHOWN_EVENTS = ("listening", "web", "web-failed", "stream-started", "stream-edit-failed", "stream-ended",
                "peer-joined", "peer-lost", "worker-lost", "penalty")  # fmt: skip


def add_parser(sub, party_args, settings_args, peer_args, allow_outside_arg) -> None:
    from .web.addr import WEB_PORT_DEFAULT, parse_web_addr

    s = sub.add_parser("stream", help="stream a scene: the party re-renders it each time its files are saved")
    s.add_argument("scene", help="scene .toml, .xml, a mesh file, or a built-in name")
    party_args(s, party_required=False)
    peer_args(s)
    settings_args(s)
    s.add_argument("-o", "--output", metavar="PNG", help="keep the newest preview here, as it refines")
    s.add_argument("--no-watch", dest="watch", action="store_false", help="do not watch the scene's files")
    allow_outside_arg(s)
    web_help = f"serve the web page (its Stream view) here (default 127.0.0.1:{WEB_PORT_DEFAULT})"
    s.add_argument("--web", type=parse_web_addr, metavar="HOST:PORT", help=web_help)
    s.add_argument("--no-web", action="store_true", help="serve no web page")
    s.add_argument("--json", action="store_true", help="one JSON object per line on stdout")


def _say(args, kind: str, text: str, **fields) -> None:
    if args.json:
        print(json.dumps({"event": kind, **fields}), flush=True)
    else:
        print(text, flush=True)


async def watch_files(session, first, args, load) -> None:
    """Reload the scene whenever a file it read changes; `load()` loads it again."""
    import trio
    import watchfiles

    desc = first
    while session.ended is None:
        inputs = {os.path.realpath(p) for p in desc.inputs}
        folders = sorted({os.path.dirname(p) for p in inputs if os.path.isdir(os.path.dirname(p))})
        if not folders:
            _say(args, "not-watching", "nothing to watch: a built-in scene (edit it on the web page)")
            return
        restart = trio.Event()

        def ours(change, path: str, inputs=inputs) -> bool:
            return os.path.realpath(path) in inputs

        changed = watchfiles.awatch(*folders, watch_filter=ours, step=STEP_MS, debounce=DEBOUNCE_MS,
                                    recursive=False, stop_event=restart)  # fmt: skip
        async for changes in changed:
            t0 = time.perf_counter()
            try:
                new = await trio.to_thread.run_sync(load)
                version = await session.reload(new)
            except (MeshrenderError, ValueError) as exc:  # a half-saved file: keep what renders
                _say(args, "edit-failed", f"not applied: {exc}", reason=str(exc))
                continue
            took = time.perf_counter() - t0
            names = sorted(Path(p).name for _, p in changes)
            _say(args, "reloaded", f"{', '.join(names)} changed: version {version} "
                 f"({1000 * took:.0f} ms to load, compile and lease)", version=version,
                 files=names, seconds=round(took, 4))  # fmt: skip
            desc = new
            if {os.path.realpath(p) for p in new.inputs} != inputs:
                restart.set()  # it names other files now: watch those


async def report(session, args) -> None:
    """Follow the previews: a line per version's first frame, each second, and at convergence."""
    from .output import write_png

    shown: tuple[int, int] = (0, 0)
    last_line = last_png = 0.0
    async for f in session.frames("cli"):
        now = time.monotonic()
        first = f.version != shown[0]
        done = f.pass_done == f.pass_count
        if first or done or now - last_line >= REPORT_S:
            last_line = now
            peers = [p[-8:] for p in f.peers]
            text = (f"version {f.version}: pass {f.pass_done}/{f.pass_count} ({f.samples} spp) by "
                    f"{', '.join(peers)}{' — converged' if done else ''}")  # fmt: skip
            _say(args, "preview", text, version=f.version, pass_done=f.pass_done, pass_count=f.pass_count,
                 samples=f.samples, peers=list(f.peers))  # fmt: skip
        shown = (f.version, f.pass_done)
        if args.output and (done or now - last_png >= PREVIEW_WRITE_S):
            last_png = now
            out = Path(args.output)
            tmp = out.with_name(f".{out.name}.tmp")
            write_png(tmp, f.image, f.exposure)
            os.replace(tmp, out)  # a viewer never reads half a file


def cmd_stream(args: argparse.Namespace, home: Path, secret: bytes, settings_of, with_signals) -> int:
    """`settings_of(args, settings)` applies the command line's overrides; `with_signals(scope)`
    cancels the scope on Ctrl-C or SIGTERM (both are cli.py's)."""
    import trio

    from .local import socket_path
    from .node import Peer
    from .scene.load import load_scene
    from .streaming import StreamSession
    from .web.addr import WEB_PORT_DEFAULT

    def load():
        return load_scene(args.scene, allow_outside=args.allow_outside)

    desc = load()
    settings = settings_of(args, desc.settings)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "1 change detected": our line says more

    def show(ev: dict) -> None:
        if ev["event"] in SHOWN_EVENTS:
            rest = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("event", "t"))
            if args.json:
                print(json.dumps(ev), flush=True)
            else:
                print(f"{ev['event']}: {rest}", flush=True)

    peer = Peer(home=home, party=args.party, secret=secret, listen=args.listen, bootstrap=args.bootstrap,
                on_event=show, backend=args.backend, threads=args.threads, mdns=args.mdns, run_queue=True,
                verify=args.verify, local_socket=socket_path(home),
                web=None if args.no_web else args.web or ("127.0.0.1", WEB_PORT_DEFAULT))  # fmt: skip

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(with_signals, n.cancel_scope)
            await n.start(peer.run)
            session = StreamSession(peer, desc, settings)
            await n.start(session.run)
            if args.watch:
                n.start_soon(watch_files, session, desc, args, load)
            await report(session, args)
            n.cancel_scope.cancel()

    trio.run(main)
    return 0

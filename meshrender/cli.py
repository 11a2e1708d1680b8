"""The `meshrender` command line.

`meshrender render SCENE` loads a scene file, a bare mesh or a built-in scene, renders it on this
machine bucket by bucket (a progress bar on a terminal), writes EXR + PNG + a JSON record, and with
`--json` prints one JSON object on stdout. Errors a user can fix print one line naming the problem
and exit with status 2; nothing is written for a scene that failed to load.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from . import __version__, cli_jobs, cli_stream
from .cli_common import open_store, peer_home_lock
from .errors import MeshrenderError

EXIT_USER_ERROR = 2
log = logging.getLogger("meshrender")


def _resolution(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution {text!r} is not WxH, e.g. 640x480") from None
    return w, h


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshrender", description="Peer-to-peer path tracer.")
    p.add_argument("--version", action="version", version=f"meshrender {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("render", help="render a scene on this machine")
    r.add_argument("scene", help="scene .toml, a mesh (.obj .ply .gltf .glb), or a built-in name (cornell)")
    allow_outside_arg(r)
    r.add_argument("-o", "--output", help="OUT.png or OUT.exr (both are written, plus OUT.json)")
    _settings_args(r)
    r.add_argument("--backend", choices=("auto", "cpu", "gpu"), default="auto")
    r.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    r.add_argument("--home", help="peer state folder (default $MESHRENDER_HOME): store, queue, results")
    r.add_argument("--party", help="render across this party's peers (this machine renders too)")
    r.add_argument(
        "--local-render", action=argparse.BooleanOptionalAction, default=True,
        help="with --party: this machine takes leases too (--no-local-render: it only coordinates, "
        "leaving its cores to other work; V-Ray's \"don't use local machine\")",
    )  # fmt: skip
    r.add_argument("--secret", help="party secret (or --secret-file, or $MESHRENDER_SECRET)")
    r.add_argument("--secret-file", help="file holding the party secret")
    r.add_argument("--listen", action="append", metavar="MULTIADDR", help="default /ip4/127.0.0.1/tcp/0")
    r.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR", help=".../p2p/<peer id>")
    r.add_argument(
        "--mdns", action=argparse.BooleanOptionalAction, default=False, help="find members by mDNS"
    )
    r.add_argument("--verify", type=_fraction, default=0.0, metavar="F", help=VERIFY_HELP)

    d = sub.add_parser("demo", help="start a render party on loopback, render the built-in scene across it")
    d.add_argument("--peers", type=_positive, default=3, help="headless peers to start (default 3)")
    d.add_argument("-o", "--output", default="demo.png", help="OUT.png or OUT.exr (default demo.png)")
    d.add_argument("--scene", default="cornell", help="scene to render (default: the built-in cornell)")
    allow_outside_arg(d)
    d.add_argument("--spp", type=_positive, default=32, help="samples per pixel (default 32)")
    d.add_argument("--res", type=_resolution, metavar="WxH", default=(256, 256), help="default 256x256")
    d.add_argument("--tile", type=_positive, metavar="PX", default=32, help="bucket size (default 32)")
    d.add_argument("--no-denoise", dest="denoise", action="store_const", const=False, default=True,
                   help="no OUT.denoised.png (denoised by default, whole frame)")
    d.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    st = sub.add_parser("store", help="this peer's content-addressed scene store")
    ss = st.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    add = ss.add_parser("add", help="import a scene; prints its id, total bytes and bytes new to the store")
    add.add_argument("scene", help="scene .toml, a mesh file, or a built-in name")
    add.add_argument("--pin", metavar="REASON", help="pin the scene so the quota never evicts it")
    allow_outside_arg(add)
    for name, text in (
        ("stats", "chunks, bytes, scenes and quota"),
        ("verify", "re-read and re-hash every chunk; corrupt ones are quarantined (exit 1 if any)"),
        ("gc", "drop chunks no scene uses and evict down to the quota"),
    ):
        ss.add_parser(name, help=text)
    fetch = ss.add_parser("fetch", help="fetch a scene from the party's peers into this store")
    fetch.add_argument("scene_id", help="the scene id (64 hex digits) that `store add` printed")
    _party_args(fetch)

    tui = sub.add_parser("tui", help="the TUI on this machine's peer (what `meshrender` alone opens)")
    _tui_args(tui)

    peer = sub.add_parser("peer", help="run this machine's peer: join a party, serve and fetch scenes")
    headless_help = "no TUI: events on stdout (without it, on a terminal, the TUI shows the peer)"
    peer.add_argument("--headless", action="store_true", help=headless_help)
    _party_args(peer)
    peer.add_argument("--json", action="store_true", help="one JSON line per event on stdout")
    _peer_args(peer)
    from .web.addr import WEB_PORT_DEFAULT, parse_web_addr

    web_help = (f"serve the web page here (default 127.0.0.1:{WEB_PORT_DEFAULT}, or any free port when that "
                "one is taken; :0 for any); a non-loopback address asks for the party secret")  # fmt: skip
    peer.add_argument("--web", type=parse_web_addr, metavar="HOST:PORT", help=web_help)
    peer.add_argument("--no-web", action="store_true", help="serve no web page")  # fmt: skip

    for sp in ss.choices.values():
        sp.add_argument("--home", help="peer state folder (default $MESHRENDER_HOME)")
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    cli_jobs.add_parsers(sub, _party_args, _settings_args)
    cli_stream.add_parser(sub, _party_args, _settings_args, _peer_args, allow_outside_arg)
    sm = sub.add_parser("sim", help="simulate a render party on the real scheduling code")
    sm.add_argument("scenario", help="scenario .toml, or shipped: lan_party_8, office_64_mixed, churn_1000")
    sm.add_argument("--seed", type=int, default=0, help="the run's seed (the same seed replays it exactly)")
    sm.add_argument("--out", metavar="DIR", help="write timeline.png and metrics.json here")
    sm.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    tl = sub.add_parser("timeline", help="draw a finished job's per-peer timeline (PNG) from its job.json")
    tl.add_argument("job", metavar="RESULTS_DIR_OR_JOB_JSON", help="a job's results folder, or its job.json")
    tl.add_argument("-o", "--output", metavar="PNG", help="where to write it (default: timeline.png beside)")
    tl.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def allow_outside_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="let the scene read files outside its own folder tree (refused by default)",
    )


def _settings_args(r: argparse.ArgumentParser) -> None:
    """Overrides of the scene's render settings."""
    r.add_argument("--spp", type=_positive, help="samples per pixel")
    r.add_argument("--res", type=_resolution, metavar="WxH", help="resolution, e.g. 640x480")
    r.add_argument("--max-depth", type=_positive, help="longest path, in segments")
    r.add_argument("--seed", type=int, help="random seed (0..2^32-1)")
    r.add_argument("--pass-spp", type=_positive, help="samples per pass (the film's unit of order)")
    r.add_argument("--exposure", type=float, help="PNG exposure, in stops")
    r.add_argument("--tile", type=_positive, metavar="PX", help="bucket size in pixels")
    r.add_argument("--denoise", action="store_const", const=True,
                   help="also write NAME.denoised.png/.exr (Open Image Denoise, whole frame)")  # fmt: skip


SOLO_PARTY = "solo"  # the party a TUI-started peer joins when none is named: this machine alone
VERIFY_HELP = (
    "fraction of units of the jobs this peer coordinates that a second peer renders too, compared bit "
    "for bit (0..1, default 0: only the endgame's duplicates are compared)"
)


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        f = -1.0
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return f


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return n


def _party_args(p: argparse.ArgumentParser, *, party_required: bool = True) -> None:
    if party_required:
        p.add_argument("--party", required=True, help="party name")
    else:
        p.add_argument("--party", default=SOLO_PARTY, help=f"party name (default {SOLO_PARTY!r}, on its own)")
    p.add_argument("--secret", help="party secret (or --secret-file, or $MESHRENDER_SECRET)")
    p.add_argument("--secret-file", help="file holding the party secret")
    p.add_argument("--listen", action="append", metavar="MULTIADDR", help="default /ip4/127.0.0.1/tcp/0")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR", help=".../p2p/<peer id>")




async def _with_signals(cancel_scope) -> None:
    import signal

    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            cancel_scope.cancel()
            return


def cmd_peer(args: argparse.Namespace) -> int:
    if not args.headless and not args.json and sys.stdout.isatty():
        return cmd_tui(args)  # the same peer, with the TUI on it
    import trio

    from .home import meshrender_home
    from .local import socket_path
    from .node import Peer, read_secret
    from .web.addr import WEB_PORT_DEFAULT

    secret = read_secret(args.secret, args.secret_file)
    warn_weak_secret(secret)
    home = meshrender_home(args.home)

    def show(ev: dict) -> None:
        if args.json:
            print(json.dumps(ev), flush=True)
        else:
            rest = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("event", "t"))
            print(f"{ev['event']}: {rest}", flush=True)

    peer = Peer(home=home, party=args.party, secret=secret, listen=args.listen,
                bootstrap=args.bootstrap, on_event=show, backend=args.backend, threads=args.threads,
                mdns=args.mdns, run_queue=True, verify=args.verify, local_socket=socket_path(home),
                web=None if args.no_web else args.web or ("127.0.0.1", WEB_PORT_DEFAULT))  # fmt: skip

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(_with_signals, n.cancel_scope)
            await peer.run()

    trio.run(main)
    return 0


def cmd_store_fetch(args: argparse.Namespace) -> int:
    import trio

    from .distributed import join_party, notice_printer, watch_progress
    from .home import meshrender_home
    from .node import Peer, read_secret

    secret = read_secret(args.secret, args.secret_file)
    if not args.bootstrap:
        raise MeshrenderError("store fetch needs --bootstrap MULTIADDR of a party member")

    def fetching():  # progress: bytes in; the fetch has its own deadline (and fails when stuck)
        got = peer.transfers["bytes_in"]
        return got, (f"fetching scene {args.scene_id[:16]}: {got:,} bytes so far from "
                     f"{len(peer.members)} member(s)")  # fmt: skip

    peer = Peer(home=meshrender_home(args.home), party=args.party, secret=secret, listen=args.listen,
                bootstrap=args.bootstrap, render=False)  # fmt: skip
    out: dict = {}

    async def main():
        async with trio.open_nursery() as n:
            await n.start(peer.run)
            await join_party(peer, bootstrap=args.bootstrap)
            n.start_soon(lambda: watch_progress(fetching, on_notice=notice_printer(args.json)))
            out.update(await peer.fetch_scene(args.scene_id))
            out["penalties"] = peer.penalties
            n.cancel_scope.cancel()

    trio.run(main)
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"scene {out['scene_id']}: {out['fetched_bytes']:,} bytes in {out['fetched_chunks']} chunks from "
            f"{len(out['bytes_by_provider'])} peer(s) in {out['seconds']:.2f} s"
        )
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    with open_store(args.home) as store:
        if args.store_command == "add":
            from .scene.compile import compile_scene
            from .scene.load import load_scene
            from .store.scenes import import_scene

            rep = import_scene(store, compile_scene(load_scene(args.scene, allow_outside=args.allow_outside)))
            if args.pin:
                store.pin(rep.scene_id, args.pin)
            out = {**dataclasses.asdict(rep), "store": str(store.root)}
            text = (
                f"scene {rep.scene_id}: {rep.total_bytes:,} bytes in {rep.chunks} chunks, "
                f"{rep.new_bytes:,} bytes new ({rep.new_chunks} chunks)"
            )
            status = 0
        elif args.store_command == "stats":
            out = store.stats()
            text = "\n".join(f"{k}: {v}" for k, v in out.items())
            status = 0
        elif args.store_command == "verify":
            out = store.verify()
            bad = len(out["corrupt"]) + len(out["missing"])
            text = f"checked {out['checked']} chunks: {out['ok']} ok"
            if out["corrupt"]:
                text += f", {len(out['corrupt'])} corrupt (quarantined, fetch or re-add to restore)"
            if out["missing"]:
                text += f", {len(out['missing'])} missing blob files"
            status = 1 if bad else 0
        else:
            out = store.gc()
            text = ", ".join(f"{k}: {v}" for k, v in out.items())
            status = 0
    print(json.dumps(out) if args.json else text)
    return status


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        frac = done / total
        dt = time.perf_counter() - self.t0
        eta = dt / frac - dt if frac > 0 else 0.0
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r[{bar:<30}] {frac:6.1%} {done}/{total} units  {dt:5.1f}s  eta {eta:5.1f}s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _settings(args: argparse.Namespace, s):
    """The scene's settings with the command line's overrides, checked."""
    overrides = {}
    for arg, field in (("spp", "spp"), ("max_depth", "max_depth"), ("seed", "seed"), ("pass_spp", "pass_spp"),
                       ("exposure", "exposure"), ("tile", "bucket_px"), ("denoise", "denoise")):  # fmt: skip
        if getattr(args, arg, None) is not None:
            overrides[field] = getattr(args, arg)
    if getattr(args, "res", None) is not None:
        overrides["width"], overrides["height"] = args.res
    try:
        return msgspec.convert(msgspec.to_builtins(msgspec.structs.replace(s, **overrides)), type=type(s))
    except msgspec.ValidationError as exc:
        raise MeshrenderError(f"render settings: {exc}") from None


def _share_text(out: dict) -> str:
    total = sum(out.get("units_by_peer", {}).values()) or 1
    return "\n".join(
        f"  {peer[-12:]}: {n} units ({100 * n / total:.0f}%)"
        for peer, n in sorted(out.get("units_by_peer", {}).items(), key=lambda kv: -kv[1])
    )


def _party_output(args, out: dict, settings, record_extra: dict) -> dict:
    """Copy the job's first frame to -o OUT (with its sibling and a JSON record), if asked."""
    from .output import read_exr, write_outputs

    if args.output and out.get("outputs"):
        exr = next(p for p in out["outputs"] if p.endswith(".exr"))
        record = {
            "meshrender": __version__,
            **record_extra,
            **{k: v for k, v in out.items() if k != "outputs"},
        }
        out["written"] = write_outputs(args.output, read_exr(exr), record, settings.exposure)
        den = [p for p in out["outputs"] if p.endswith(".denoised.exr")][:1]
        if den:  # the coordinator denoised the frame: beside OUT too
            from .output import write_denoised

            out["written"] += write_denoised(args.output, read_exr(den[0]), settings.exposure)
    return out


def cmd_party_render(args: argparse.Namespace, scene, settings) -> int:
    import trio

    from .distributed import jobs_db_path, notice_printer, render_on_party
    from .home import meshrender_home
    from .jobs import JobDB, JobSpec
    from .node import Peer, read_secret
    from .store.scenes import import_scene

    secret = read_secret(args.secret, args.secret_file)
    warn_weak_secret(secret)
    if not args.bootstrap and not args.mdns:
        raise MeshrenderError("render --party needs --bootstrap MULTIADDR of a party member (or --mdns)")
    home = meshrender_home(args.home)
    with open_store(args.home) as store:
        scene_id = import_scene(store, scene).scene_id
    backend = {"auto": "any"}.get(args.backend, args.backend)
    first, last = scene.frames  # an animated scene renders its frame range, frame by frame
    spec = JobSpec(scene_id=scene_id, settings=settings, first_frame=first, last_frame=last, backend=backend)
    peer = Peer(home=home, party=args.party, secret=secret, listen=args.listen, bootstrap=args.bootstrap,
                backend=args.backend, threads=args.threads or None, mdns=args.mdns,
                verify=args.verify, render=args.local_render)  # fmt: skip
    with JobDB(jobs_db_path(home)) as db:
        out = trio.run(lambda: render_on_party(peer, db, spec, bootstrap=args.bootstrap,
                                               on_notice=notice_printer(args.json)))  # fmt: skip
    out = _party_output(args, out, settings, {"settings": msgspec.to_builtins(settings)})
    if args.json:
        print(json.dumps(out))
    else:
        print(f"job {out['job_id'][:16]}: {', '.join(out.get('written') or out['outputs'])}")
        print(_share_text(out))
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from sim.engine import Sim
    from sim.scenario import load_scenario
    from sim.timeline import draw_timeline

    from .output import write_json

    scenario = load_scenario(args.scenario)
    sim = Sim(scenario, args.seed)
    t0 = time.perf_counter()
    report = sim.run(progress=Progress(sys.stderr.isatty() and not args.json))
    wall = time.perf_counter() - t0
    out = {"scenario": scenario.name, **report.to_json(), "wall_s": round(wall, 3)}
    out.pop("bytes_by_peer")
    moved = [i + o for i, o in report.bytes_by_peer.values()]
    out["bytes_per_peer_mean"] = round(sum(moved) / len(moved))
    out["bytes_per_peer_max"] = max(moved)
    if args.out:
        folder = Path(args.out)
        out["timeline"] = str(draw_timeline(sim, folder / "timeline.png"))
        write_json(folder / "metrics.json", {**out, "bytes_by_peer": report.bytes_by_peer})
        out["metrics"] = str(folder / "metrics.json")
    if args.json:
        print(json.dumps(out))
    else:
        frame = "did not complete" if report.frame_s is None else f"{report.frame_s:.2f} s"
        print(f"{scenario.name} (seed {report.seed}): frame {frame}, ideal {report.ideal_s:.2f} s, "
              f"efficiency {report.efficiency}; {report.units} units, {report.leases} leases, "
              f"{report.re_leased_units} re-leased, {report.duplicated_units} duplicated; "
              f"{report.events:,} events in {wall:.1f} s")  # fmt: skip
        d = report.distribution
        if d is not None:
            took = "not done" if d["distribution_s"] is None else f"{d['distribution_s']:.2f} s"
            print(f"  scene: {d['scene_bytes']:,} bytes in {d['chunks']} chunks to {d['fetched']} peers; "
                  f"the party of the start held it at {took} (bound {d['bound_s']:.2f} s), longest fetch "
                  f"{d['fetch_s_max']:.2f} s; the holders sent {d['holders_bytes_out']:,} bytes"
                  + (f"; {len(d['fetch_failed'])} fetches failed" if d["fetch_failed"] else ""))  # fmt: skip
        for v in report.violations:
            print(f"VIOLATION: {v}")
    if report.violations:
        print(f"meshrender: sim failed its invariants; replay with --seed {report.seed}", file=sys.stderr)
        return 1
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    """Draw a real job's timeline from its job.json: the same figure as `sim --out` draws."""
    from .timeline import draw, read_job_json, timeline_from_job

    src = Path(args.job)
    job_json = src / "job.json" if src.is_dir() else src
    try:
        tl = timeline_from_job(read_job_json(job_json), source=str(job_json))
    except ValueError as exc:
        raise MeshrenderError(str(exc)) from None
    path = draw(tl, args.output or job_json.with_name("timeline.png"))
    out = {"timeline": str(path), "peers": len(tl.rows), "units": sum(len(r.bars) for r in tl.rows),
           "frame_s": tl.frame_s, "ideal_s": tl.ideal_s}  # fmt: skip
    if args.json:
        print(json.dumps(out))
    else:
        ideal = "" if tl.ideal_s is None else f" (ideal {tl.ideal_s:.2f} s)"
        print(f"{path}: {out['units']} units on {out['peers']} peers, frame {tl.frame_s:.2f} s{ideal}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    import trio

    from .distributed import (
        DEMO_PARTY,
        demo_threads,
        jobs_db_path,
        notice_printer,
        render_on_party,
        start_demo_peers,
        stop_demo_peers,
        wait_demo_renderers,
    )
    from .jobs import JobDB, JobSpec
    from .node import Peer
    from .scene.compile import compile_scene
    from .scene.load import load_scene
    from .store.chunkstore import ChunkStore
    from .store.scenes import import_scene

    scene = compile_scene(load_scene(args.scene, allow_outside=args.allow_outside))
    settings = _settings(args, scene.settings)
    root = Path(tempfile.mkdtemp(prefix="meshrender-demo-"))
    home = root / "coordinator"
    with ChunkStore(home / "store") as store:
        scene_id = import_scene(store, scene).scene_id
    t0 = time.perf_counter()
    log.info("starting %d peers on loopback (logs in %s)", args.peers, root)
    procs, addrs = start_demo_peers(args.peers, root, threads=demo_threads(args.peers))
    try:
        wait_demo_renderers(procs, root)
        peer = Peer(home=home, party=DEMO_PARTY, secret=b"demo-secret", bootstrap=addrs, render=False)
        spec = JobSpec(scene_id=scene_id, settings=settings, backend="cpu")
        log.info("rendering %s at %dx%d, %d spp across them", args.scene, settings.width, settings.height,
                 settings.spp)  # fmt: skip
        with JobDB(jobs_db_path(home)) as db:
            out = trio.run(lambda: render_on_party(peer, db, spec, bootstrap=addrs, wait_members=args.peers,
                                                   on_notice=notice_printer(args.json)))  # fmt: skip
    finally:
        stop_demo_peers(procs)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    out["peers"] = args.peers
    out = _party_output(args, out, settings, {"scene": args.scene, "settings": msgspec.to_builtins(settings)})
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{', '.join(out['written'])}: {settings.width}x{settings.height} {settings.spp} spp on "
              f"{args.peers} peers in {out['wall_s']:.1f} s")  # fmt: skip
        print(_share_text(out))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from kernels.features import describe

    from .output import write_outputs
    from .render import Renderer, render_frame
    from .scene.compile import compile_scene
    from .scene.load import load_scene
    from .store.hashing import is_chunk_hash
    from .units import frame_units

    t_start = time.perf_counter()
    if not args.local_render and not args.party:
        raise MeshrenderError("render --no-local-render needs --party: without a party nothing would render")
    if is_chunk_hash(args.scene) and not os.path.exists(args.scene):  # a scene id from the store
        from .store.scenes import load_compiled

        with open_store(args.home) as store:
            scene = load_compiled(store, args.scene)
        t_loaded = t_compiled = time.perf_counter()
        source = args.scene
        scene_warnings: list[str] = []  # said when the scene was added to the store
    else:
        loaded = load_scene(args.scene, allow_outside=args.allow_outside)
        t_loaded = time.perf_counter()
        scene = compile_scene(loaded)
        t_compiled = time.perf_counter()
        source = loaded.source
        scene_warnings = list(loaded.warnings)  # e.g. a glTF extension used but not applied
    s = scene.settings
    settings = _settings(args, s)
    if args.party:
        return cmd_party_render(args, scene, settings)

    renderer = Renderer(scene, backend=args.backend, threads=args.threads)
    log.info("preparing the kernel (compiled on first use, then loaded from the disk cache)")
    kernel_s = renderer.warm_up()
    frame = scene.frames[0]  # an animation: its first frame (the party renders them all)
    units = frame_units(settings, frame=frame)
    log.info("kernel (%s) ready in %.1f s; %d triangles, %d units", describe(renderer.features), kernel_s,
             scene.triangle_count, len(units))  # fmt: skip
    t_render = time.perf_counter()
    film = render_frame(renderer, settings, frame=frame, units=units, progress=Progress(sys.stderr.isatty()))
    render_s = time.perf_counter() - t_render
    image = film.image()

    name = source.split(":")[-1][:16]
    out = args.output or f"{name.rsplit('/', 1)[-1].rsplit('.', 1)[0] or 'render'}.png"
    samples = settings.width * settings.height * settings.spp
    total_s = time.perf_counter() - t_start
    mean_rgb = [float(v) for v in image.reshape(-1, 3).mean(0)]
    record = {
        "meshrender": __version__,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "scene": source,
        "triangles": scene.triangle_count,
        "settings": msgspec.to_builtins(settings),
        "spp": settings.spp,
        "resolution": [settings.width, settings.height],
        "backend": renderer.backend.name,
        "backend_info": renderer.backend.to_json(),
        "kernel_parts": describe(renderer.features),  # what the scene's kernel holds (kernels/features.py)
        "units": len(units),
        "seconds": total_s,
        "timing_s": {
            "load": t_loaded - t_start,
            "compile_scene": t_compiled - t_loaded,
            "kernel_compile_or_cache": kernel_s,
            "upload": renderer.upload_s,
            "render": render_s,
        },
        "samples_per_second": samples / render_s if render_s > 0 else 0.0,
        "mean_rgb": mean_rgb,
        "warnings": scene_warnings,
    }
    if settings.denoise:
        from .denoise import denoise_frame

        record["denoise"] = denoise_frame(film, out, settings.exposure, args.threads)
        if "error" in record["denoise"]:
            print(f"meshrender: warning: no denoised image: {record['denoise']['error']}", file=sys.stderr)
    outputs = write_outputs(out, image, record, settings.exposure)
    record["outputs"] = outputs
    if args.json:
        print(json.dumps(record))
    else:
        print(
            f"{outputs[0]}: {settings.width}x{settings.height} {settings.spp} spp in {render_s:.2f}s "
            f"({record['samples_per_second'] / 1e6:.2f} Msamples/s on {renderer.backend.name})"
        )
        if "outputs" in record.get("denoise", {}):
            print(f"{record['denoise']['outputs'][0]}: denoised in {record['denoise']['seconds']:.2f}s")
    return 0


def _first_user_error(exc: BaseException) -> MeshrenderError | None:
    if isinstance(exc, MeshrenderError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_user_error(inner)
            if found is not None:
                return found
    return None


def _peer_args(p: argparse.ArgumentParser) -> None:
    """How this machine's peer runs: `meshrender peer` and `meshrender tui` (which may start it)."""
    p.add_argument("--home", help="peer state folder (default $MESHRENDER_HOME)")
    p.add_argument("--backend", choices=("auto", "cpu", "gpu"), default="auto", help="what renders here")
    p.add_argument("--threads", type=_positive_int, help="CPU threads to render with (default: all cores)")
    p.add_argument("--verify", type=_fraction, default=0.0, metavar="F", help=VERIFY_HELP)
    p.add_argument(
        "--mdns", action=argparse.BooleanOptionalAction, default=False,
        help="find party members on the LAN by mDNS, on the interfaces of --listen (off by default)",
    )  # fmt: skip


def _tui_args(p: argparse.ArgumentParser) -> None:
    _party_args(p, party_required=False)
    _peer_args(p)


def cmd_tui(args: argparse.Namespace) -> int:
    """Attach to this machine's running peer, or start one here (in a thread) and attach to it."""
    from tui.app import MeshrenderApp, attach_or_start, peer_in_thread

    from .home import meshrender_home
    from .local import socket_path
    from .node import Peer

    home = meshrender_home(args.home)
    home.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()  # log lines would tear the screen: they go to a file in the home
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(home / "tui.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    root.addHandler(handler)

    def start_peer():
        secret = party_secret(args, home)  # warned before the screen is taken: it stays on the terminal
        return peer_in_thread(lambda: Peer(
            home=home, party=args.party, secret=secret, listen=args.listen, bootstrap=args.bootstrap,
            backend=args.backend, threads=args.threads, mdns=args.mdns, run_queue=True,
            verify=args.verify, local_socket=socket_path(home),
            render_log=home / "tui.log"))  # fmt: skip

    MeshrenderApp(home, attach_or_start(home, start_peer)).run()
    return 0


def warn_weak_secret(secret: bytes) -> None:
    """Say so on stderr when the party secret is weak, and how to make a strong one."""
    from .peer.membership import FAILURES_MAX, weak_secret

    why = weak_secret(secret)
    if why is not None:
        print(f"meshrender: warning: the party secret is weak: {why}. Anyone who can reach a peer may "
              f"try guesses at it ({FAILURES_MAX} a minute from each address). Make a strong one, "
              "and pass it as a file:\n  (umask 077; "
              "python3 -c \"import secrets; print(secrets.token_urlsafe(24))\" > party.secret)\n"
              "  meshrender peer --party NAME --secret-file party.secret", file=sys.stderr)  # fmt: skip


def party_secret(args: argparse.Namespace, home: Path) -> bytes:
    """--secret / --secret-file (warned about when weak), or this machine's own solo party's."""
    from .node import read_secret

    if args.secret or args.secret_file or args.party != SOLO_PARTY:
        secret = read_secret(args.secret, args.secret_file)
        warn_weak_secret(secret)
        return secret
    return solo_secret(home)


def solo_secret(home: Path) -> bytes:
    """The secret of this machine's own party (kept in its home; a party of one needs no sharing)."""
    import secrets

    path = home / "solo-secret"
    if not path.exists():  # created 0600 in one step: never readable by others, not even for a moment
        home.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".solo-secret.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, secrets.token_hex(16).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    return path.read_bytes().strip()


def _uses_network(args: argparse.Namespace) -> bool:
    """Whether the command runs a libp2p host (importing libp2p costs a second otherwise spared)."""
    if args.command in ("peer", "tui", "demo", "stream"):
        return True
    if args.command == "store":
        return args.store_command == "fetch"
    if args.command == "render":
        return bool(args.party)
    return bool(getattr(args, "to", None))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if argv or not sys.stdout.isatty():
            parser.print_help()
            return 0
        args = parser.parse_args(["tui"])
    logging.basicConfig(level=logging.INFO, format="meshrender: %(message)s", stream=sys.stderr)
    logging.getLogger("taichi").setLevel(logging.WARNING)
    if _uses_network(args):  # py-libp2p's multi-line failure blocks become one rate-limited line each
        from .net.logs import install

        install()
    held = contextlib.ExitStack()  # a command that runs a peer holds its home's lock throughout
    try:
        held.enter_context(peer_home_lock(args))  # before it opens the identity, store or queue
        if args.command == "peer":
            return cmd_peer(args)
        if args.command == "tui":
            return cmd_tui(args)
        if args.command == "store":
            return cmd_store_fetch(args) if args.store_command == "fetch" else cmd_store(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "sim":
            return cmd_sim(args)
        if args.command == "timeline":
            return cmd_timeline(args)
        if args.command == "stream":
            from .home import meshrender_home

            home = meshrender_home(args.home)
            return cli_stream.cmd_stream(args, home, party_secret(args, home), _settings, _with_signals)
        if args.command == "submit":
            return cli_jobs.cmd_submit(args, _settings)
        if args.command in ("jobs", "cancel", "results"):
            return getattr(cli_jobs, f"cmd_{args.command}")(args)
        return cmd_render(args)
    except BaseExceptionGroup as group:  # errors raised inside trio nurseries arrive grouped
        exc = _first_user_error(group)
        if exc is None:
            raise
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        print(f"meshrender: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MeshrenderError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        print(f"meshrender: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        held.close()


if __name__ == "__main__":
    sys.exit(main())

"""What an outsider can make a peer hold before it has joined the party, with and without the fixes.

Every figure comes from a real `meshrender peer` process on 127.0.0.1, attacked by the clients of
tests/test_preauth.py (raw sockets, and py-libp2p's own Noise client for the yamux cases):
  multistream  8 connections send the multistream header and a 2^33 length, then up to 64 MiB of
               junk each (GHSA-hmjq-g7pp-rw3x);
  yamux 16MiB  8 connections complete Noise, negotiate yamux and announce a 16 MiB DATA frame
               (0.8.1's own cap), then push junk;
  overrun      8 connections open an identify stream (which never reads again) and keep sending
               60 kB DATA frames on it;
each reported as the peer's VmRSS before and at its peak (sampled every 50 ms) in MiB. Then the
time of `meshrender store fetch` of a small scene from the peer with no idle connections and with
1,000 idle ones open (from 40 loopback addresses), and after 260 outsiders completed Noise + yamux
and left (0.8.1's inbound handler holds one of its 250 slots per connection until the swarm stops).
"unfixed" is the same peer built with 0.8.1's plain `new_host` (TCP + Noise + yamux, as before).
Run: python bench/preauth.py [--quick]   (--quick skips the unfixed peer)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_preauth as T  # noqa: E402
from party import PARTY, SECRET, PeerProc, cli  # noqa: E402

UNFIXED_FDS = """
import resource, sys
want = FDS
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard if want > 1024 else want))
from libp2p import new_host
import meshrender.node as node
from meshrender.net import host as h
def plain(key_pair, **kw):  # build_host as it was before the fixes
    noise = h.NoiseTransport(key_pair, noise_privkey=h.new_x25519_key_pair().private_key)
    security = {h.NOISE_PROTOCOL_ID: noise}
    config = h.ConnectionConfig(max_connections_per_peer=1, dial_timeout=h.DIAL_TIMEOUT_S)
    return new_host(key_pair=key_pair, sec_opt=security, muxer_preference="YAMUX", connection_config=config)
node.build_host = plain
from meshrender.cli import main
sys.exit(main(["peer", "--headless", "--json", *sys.argv[1:]]))
"""


def fixed(fds: int) -> str:
    return T.PEER_WITH_FDS.replace("sys.argv.pop(1)", str(fds))


def unfixed(fds: int) -> str:
    return UNFIXED_FDS.replace("want = FDS", f"want = {fds}")


def mib(n: int) -> int:
    return n >> 20


def _multistream(peer: PeerProc) -> tuple[int, int]:
    socks = [T.multistream_bomb(T.port_of(peer)) for _ in range(T.HOSTILE_CONNECTIONS)]
    peak, closed, _ = T.flood(socks, peer.proc.pid)
    return peak, len(closed)


def _yamux(first: bytes, junk: bytes):
    def attack(peer: PeerProc) -> tuple[int, int]:
        peak, outcomes = T.yamux_attack(T.port_of(peer), peer.peer_id, peer.proc.pid, first, junk)
        return peak, sum(o != "still open" for o in outcomes)

    return attack


ATTACKS = {
    "multistream 2^33": _multistream,
    "yamux 16 MiB frame": _yamux(T.yamux_header(0, 1, 1, 16 << 20), b"\xa5" * 60000),
    "overrun identify stream": _yamux(*T.identify_then_flood()),
}


def memory(tmp: Path, script: str) -> dict:
    """Each attack on a fresh peer (Python keeps what it once allocated, so one after another
    would hide the later ones)."""
    out = {}
    for name, attack in ATTACKS.items():
        peer = PeerProc(tmp / f"mem-{time.monotonic_ns()}", script=script)
        try:
            time.sleep(3)  # start-up allocations settle
            before = T.vmrss(peer.proc.pid)
            peak, closed = attack(peer)
            out[name] = {"rss_before_mib": mib(before), "rss_peak_mib": mib(peak),
                         "growth_mib": mib(peak - before), "connections_closed": closed}  # fmt: skip
        finally:
            peer.stop()
    return out


def fetch_s(home: Path, scene: str, peer: PeerProc) -> dict | str:
    """Wall time of the CLI fetch (process start included) and the fetch's own seconds."""
    args = ["store", "fetch", scene, "--party", PARTY, "--secret", SECRET, "--json", "--bootstrap", peer.addr]
    t0 = time.monotonic()
    p = cli(*args, home=home, timeout=120)
    took = round(time.monotonic() - t0, 2)
    if p.returncode != 0:
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else str(p.returncode)
        return f"failed after {took} s: {last}"
    return {"wall_s": took, "fetch_s": round(json.loads(p.stdout)["seconds"], 3)}


async def _complete_and_leave(port: int, peer_id: str, n: int) -> int:
    """n outsiders, one after another: Noise, yamux, then gone. Returns how many got that far."""
    done = 0
    for _ in range(n):
        try:
            with trio.fail_after(5):
                await T._yamux_bomb(port, peer_id, b"", b"", 0, 0.01)
            done += 1
        except Exception:  # refused: the slot table is full
            pass
    return done


def fetching(tmp: Path, script: str, scene_home: Path, scene: str) -> dict:
    home = tmp / f"peer-{time.monotonic_ns()}"
    shutil.copytree(scene_home, home)
    (home / "identity.ed25519").unlink(missing_ok=True)
    peer = PeerProc(home, script=script)
    out = {}
    try:
        fetch_s(tmp / f"f-{time.monotonic_ns()}", scene, peer)  # warm: first imports, page cache
        out["no idle"] = fetch_s(tmp / f"f-{time.monotonic_ns()}", scene, peer)
        socks = [T.connect(T.port_of(peer), T.ATTACKER_ADDRS[i % len(T.ATTACKER_ADDRS)]) for i in range(1000)]
        out["1000 idle"] = fetch_s(tmp / f"f-{time.monotonic_ns()}", scene, peer)
        for s in socks:
            s.close()
        time.sleep(1)
        out["outsiders through Noise + yamux, of 260"] = trio.run(
            _complete_and_leave, T.port_of(peer), peer.peer_id, 260
        )
        out["after 260 outsiders left"] = fetch_s(tmp / f"f-{time.monotonic_ns()}", scene, peer)
    finally:
        peer.stop()
    return out


def descriptors(tmp: Path, script: str) -> dict:
    """300 idle connections (40 source addresses) for 3 s at a peer limited to 256 descriptors."""
    peer = PeerProc(tmp / f"fd-{time.monotonic_ns()}", script=script)
    try:
        socks = [T.connect(T.port_of(peer), T.ATTACKER_ADDRS[i % len(T.ATTACKER_ADDRS)]) for i in range(300)]
        time.sleep(3)
        fds = len(list(Path(f"/proc/{peer.proc.pid}/fd").iterdir()))
        for s in socks:
            s.close()
    finally:
        peer.stop()
    err = peer.proc.stderr.read()
    return {"open_descriptors": fds, "tracebacks": err.count("Traceback"),
            "emfile_lines": sum("EMFILE" in row for row in err.splitlines())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the fixed peer only")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(4096, hard)), hard))
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scene_home = tmp / "scene-home"
        p = cli("store", "add", T._tiny_scene(tmp / "tiny.obj"), "--json", home=scene_home)
        scene = json.loads(p.stdout)["scene_id"]
        for name, script in [("fixed", fixed)] + ([] if args.quick else [("unfixed", unfixed)]):
            results[name] = {
                "memory": memory(tmp, script(4096)),
                "fetch": fetching(tmp, script(4096), scene_home, scene),
                "256 descriptors, 300 idle": descriptors(tmp, script(256)),
            }
            print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

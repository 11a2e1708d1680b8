"""What the TUI costs per second: the work one snapshot makes on the app's event loop (the
party, transfers and frame updated and laid out, every member's row changed, the Frame tab
showing) and on the peer (the
frame view's JSON), for parties of 8 to 512 members and a 4K frame, against the 1 s between
snapshots. Figures only: nothing here asserts a time.

    python bench/tui.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from meshrender.frameview import FrameView  # noqa: E402
from meshrender.local import SNAPSHOT_S  # noqa: E402
from meshrender.settings import RenderSettings  # noqa: E402
from meshrender.units import frame_units  # noqa: E402
from tui.app import MeshrenderApp  # noqa: E402
from tui.widgets import LiveTable, frame_lines  # noqa: E402


def four_k_view(peers: int) -> FrameView:
    """A 3840x2160 frame in 64 px buckets, 4 passes, pass 0 leased to and accepted from `peers`."""
    s = RenderSettings(width=3840, height=2160, spp=64, pass_spp=16, bucket_px=64)
    units = frame_units(s)
    view = FrameView("j" * 64, s.width, s.height, s.pass_count, units)
    rng = np.random.default_rng(1)
    first = units[: len(units) // s.pass_count]
    for i, u in enumerate(first):
        p = f"peer{i % peers}"
        view.leased(p, [u])
        view.accepted(p, u, rng.random((1, u.height, u.width, 3), dtype=np.float32) * 16, [16])
    return view


def member(i: int) -> dict:
    st = {"version": "0.1.0", "state": "busy", "activity": "rendering", "backend": "x64", "fell_back": False,
          "speed": 2.0 + i % 7, "threads": 8, "free_mem": 1 << 33, "load": 3.5, "scenes": 2, "gpu": False,
          "renders": True, "units": i, "reason": ""}  # fmt: skip
    return {"status": st, "bytes_served": i * 1000, "bytes_received": i * 2000, "chunks_serving": i % 3,
            "chunks_fetching": i % 5}  # fmt: skip


def time_ms(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    view = four_k_view(8)
    js = view.to_json()
    # a second view a pass on, so each snapshot brings a frame to draw, as while a frame renders
    js2 = dict(js, done=[d + 1 for d in js["done"]])
    print(f"4K frame, {len(view.rects)} buckets, preview {view.preview_size[0]}x{view.preview_size[1]}")
    print(f"  peer: FrameView.to_json            {time_ms(view.to_json, args.repeat):7.2f} ms per snapshot")
    for w, h in ((80, 24), (200, 60)):
        ms = time_ms(lambda w=w, h=h: frame_lines(js, w - 2, h - 8), args.repeat)
        print(f"  app:  frame_lines at {w}x{h:<3}         {ms:7.2f} ms")
    print(f"\nthe app's work per snapshot (one every {SNAPSHOT_S:g} s), 80x24 and 200x60:")
    print("  (refilled: the tables cleared and filled again each time, as before LiveTable)")
    heads = ("members", "80x24 ms", "200x60 ms", "CPU at 80x24", "refilled ms", "ratio")
    print("  " + "  ".join(f"{h:>{w}}" for h, w in zip(heads, (7, 9, 9, 12, 11, 5), strict=True)))
    with tempfile.TemporaryDirectory() as tmp:
        for n in (0, 8, 64, 512):
            snap = {"peer_id": "me" * 26, "party": "bench", "status": member(0)["status"],
                    "members": {f"12D3KooW{i:044d}": member(i) for i in range(n)},
                    "transfers": {"bytes_in": 1, "bytes_out": 2, "chunks_in": 3, "chunks_out": 4},
                    "frames": [js] if n else []}  # fmt: skip
            # every member a unit on in the next one: each row of the party changes (the worst case)
            on = {p: dict(m, status=dict(m["status"], units=m["status"]["units"] + 1))
                  for p, m in snap["members"].items()}  # fmt: skip
            snaps = [snap, dict(snap, members=on, frames=[js2] if n else [])]  # 0: the floor
            cells = []
            for size, refill in (((80, 24), False), ((200, 60), False), ((80, 24), True)):
                app = MeshrenderApp(Path(tmp), lambda on_item, on_gone: (lambda: None))

                async def go(app=app, size=size, snaps=snaps, refill=refill):
                    # CPU time (the process's: idle waits inside pause() are not counted) for the
                    # snapshot handled and the app's queue drained, layout and drawing included
                    async with app.run_test(size=size) as pilot:
                        await pilot.press("5")
                        await pilot.pause()
                        runs = []
                        for i in range(args.repeat):
                            if refill:  # forget what is shown: every table is filled afresh
                                for table in app.query(LiveTable):
                                    table._shown = []
                            t0 = time.process_time()
                            app.apply({"snapshot": snaps[i % 2]})
                            await pilot.pause()
                            runs.append((time.process_time() - t0) * 1000)
                        return statistics.median(runs)

                cells.append(asyncio.run(go()))
            busy = cells[0] / (SNAPSHOT_S * 1000)
            ratio = cells[2] / cells[0]
            print(f"  {n:>7}  {cells[0]:9.2f}  {cells[1]:9.2f}  {busy:11.1%}  {cells[2]:11.2f}  {ratio:5.1f}")


if __name__ == "__main__":
    main()

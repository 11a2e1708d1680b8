"""The per-peer timeline of a simulated run as a PNG: one row per peer (the first ROWS_MAX when
there are more), time left to right; each unit a bar in its peer class's colour (a wrong result in
red), a peer's departure a black mark, a frozen stretch grey, fetching the scene a thin light
band along the row's foot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS_MAX = 256  # peers drawn; a bigger party's picture shows its first ones
WIDTH_PX = 1200
ROW_PX_MAX, HEIGHT_PX = 24, 600  # rows shrink to fit a big party in the picture (4 px at least)
PALETTE = [(66, 133, 244), (52, 168, 83), (251, 188, 5), (171, 71, 188), (0, 172, 193), (255, 112, 67)]
LIE = (234, 67, 53)
FETCH = (150, 200, 255)


def draw_timeline(sim, path: str | Path) -> Path:
    from PIL import Image

    peers = list(sim.peers.values())[:ROWS_MAX]
    end = max([sim.done_at or sim.now, 1e-9])
    classes = sorted({p.cls for p in peers})
    row_px = max(4, min(ROW_PX_MAX, HEIGHT_PX // max(len(peers), 1)))
    img = np.full((len(peers) * row_px + 2, WIDTH_PX, 3), 255, np.uint8)

    def x(t: float) -> int:
        return min(WIDTH_PX - 1, max(0, int(t / end * (WIDTH_PX - 1))))

    for row, p in enumerate(peers):
        y0, y1 = row * row_px + 1, row * row_px + row_px - 1
        colour = PALETTE[classes.index(p.cls) % len(PALETTE)]
        dist = sim.dist
        if dist is not None:
            started, done = dist.finished.get(p.name, (None, None))
            if started is None and p.name in dist.fetches:
                started, done = dist.fetches[p.name].started, end
            if started is not None:
                img[y1 - max(1, row_px // 4) : y1, x(started) : x(done) + 1] = FETCH
        for start, stop in p.frozen_spans:
            img[y0:y1, x(start) : x(end if stop is None else stop) + 1] = (190, 190, 190)
        for start, stop, _unit, lie in p.bars:
            img[y0:y1, x(start) : max(x(stop), x(start) + 1)] = LIE if lie else colour
        if p.left_at is not None:
            img[y0 - 1 : y1 + 1, x(p.left_at) : x(p.left_at) + 2] = (0, 0, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, "RGB").save(path, format="PNG")
    return path

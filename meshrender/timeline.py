"""Per-peer timelines of a frame, for people: who rendered what, when, and what went wrong.

How it works
  * A `Timeline` is plain data (frozen dataclasses, times in seconds from the frame's start): one
    `Row` per peer with its unit bars (a wrong result marked), lease grants, scene fetches,
    freezes, and when it joined or left; plus the frame time and the ideal one. Two sources fill
    it: `timeline_from_job` reads a real job's `job.json` (what `coordinate.job_provenance` writes),
    and `sim.timeline.timeline_from_sim` a simulated run. One drawing function draws both alike.
  * `figure(timeline)` builds a matplotlib `Figure` (Agg, never pyplot's global state; matplotlib
    is imported there, so importing meshrender stays fast): time in seconds across, one labelled
    row per peer ("12D3Ko…x7Qa (cuda)"), a legend of what each colour and mark means, a dashed
    line at the ideal frame time and a solid one at the actual. `draw` saves it as a PNG,
    `png_bytes` returns the PNG (for the web page).
  * A job.json is a file a user hands us: `timeline_from_job` checks every field it reads (types,
    bounds, finite times, counts) and raises ValueError naming the field.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

ROWS_MAX = 48  # rows drawn: each stays tall enough for its label; a bigger party shows its first ones
BARS_PER_ROW_MAX = 4000  # past this a row's touching bars are merged (they are under a pixel wide)
WIDTH_IN, DPI = 12.0, 100  # a 1200 px wide picture
ROW_IN, MARGIN_IN, LEGEND_IN = 0.26, 1.3, 0.9
SHORT_ID_HEAD = 6  # "12D3Ko…": a libp2p id's head, then as much of its tail as tells rows apart
SHORT_ID_TAIL_MIN = 4
# a class's bars; red is for lies and grey for freezes, so neither is here
CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:cyan", "tab:brown",
                 "tab:pink", "tab:olive")  # fmt: skip
LIE_COLOUR = "tab:red"
FETCH_COLOUR = "#8ec5ff"
FREEZE_COLOUR = "#d0d0d0"

# what timeline_from_job reads, at most
JOB_UNITS_MAX = 1_000_000  # unit records (~200 bytes of JSON each); a bigger job.json is refused
JOB_LEASES_MAX = 100_000  # lease records (coordinate.LEASE_LOG_MAX: it lists no more)
JOB_S_MAX = 366 * 86400.0  # a span longer than a year between the job's times is not a real job
EPOCH_S_MAX = 1e11  # wall-clock seconds (the year 5138)
PEER_ID_CHARS_MAX = 128  # a libp2p peer id is 52 characters
LABEL_CHARS_MAX = 64


@dataclass(frozen=True)
class Bar:
    start_s: float
    end_s: float
    lied: bool = False  # the result was wrong (a lying or broken peer)
    cls: str = ""  # what rendered it, when not the row's class (a GPU peer fell back to its CPU)


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float | None = None  # None: until the end of the run


@dataclass(frozen=True)
class Row:
    peer: str  # the full id (a libp2p peer id, or a simulated peer's name)
    cls: str  # its class: the backend that rendered its units, or a simulated peer class
    bars: tuple[Bar, ...] = ()
    leases: tuple[float, ...] = ()  # when it was granted a lease
    fetches: tuple[Span, ...] = ()  # fetching the scene
    freezes: tuple[Span, ...] = ()  # frozen: doing nothing, saying nothing
    joined_s: float | None = None  # when it joined, if not at the start
    left_s: float | None = None  # when it left (dropped out of the party)
    coordinator: bool = False


@dataclass(frozen=True)
class Timeline:
    title: str
    rows: tuple[Row, ...]
    end_s: float  # where the time axis ends: the frame time, or when the run stopped
    frame_s: float | None  # when the frame was complete (None: it never was)
    ideal_s: float | None = None  # total work / total capacity (None: unknown)
    done_label: str = "frame done"  # what the line at frame_s marks


def short_ids(peers: list[str]) -> dict[str, str]:
    """Short, distinct names for peer ids: a long id keeps its head and enough of its tail."""
    long = [p for p in peers if len(p) > SHORT_ID_HEAD + SHORT_ID_TAIL_MIN + 2]
    tail = SHORT_ID_TAIL_MIN
    while tail < PEER_ID_CHARS_MAX and len({(p[:SHORT_ID_HEAD], p[-tail:]) for p in long}) < len(set(long)):
        tail += 1
    out = {p: p for p in peers}
    out.update({p: f"{p[:SHORT_ID_HEAD]}…{p[-tail:]}" for p in long})
    return out


def row_labels(rows: tuple[Row, ...] | list[Row]) -> list[str]:
    names = short_ids([r.peer for r in rows])
    return [f"{names[r.peer]} ({r.cls}{', coordinator' if r.coordinator else ''})" for r in rows]


def _merged(bars: list[Bar], gap_s: float) -> list[Bar]:
    """Bars of one row with touching neighbours of the same kind joined (for very long rows)."""
    out: list[Bar] = []
    for b in sorted(bars, key=lambda b: b.start_s):
        last = out[-1] if out else None
        if last is not None and (last.lied, last.cls) == (b.lied, b.cls) and b.start_s - last.end_s <= gap_s:
            out[-1] = Bar(last.start_s, max(last.end_s, b.end_s), last.lied, last.cls)
        else:
            out.append(b)
    return out


def figure(tl: Timeline):
    """The timeline as a matplotlib Figure (with an Agg canvas): call `savefig` on it, or `draw`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = tl.rows[:ROWS_MAX]
    n = len(rows)
    height_in = MARGIN_IN + LEGEND_IN + ROW_IN * max(n, 4)
    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    classes = sorted({b.cls or r.cls for r in tl.rows for b in r.bars} | {r.cls for r in rows if r.bars})
    colour = {c: CLASS_COLOURS[i % len(CLASS_COLOURS)] for i, c in enumerate(classes)}
    end = max(tl.end_s, tl.frame_s or 0.0, tl.ideal_s or 0.0, 1e-9)
    start = min([0.0, *(b.start_s for r in rows for b in r.bars)])  # a clock that stepped back
    seen: set[str] = set()
    for y, r in enumerate(rows):
        for f in r.freezes:
            stop = end if f.end_s is None else f.end_s
            ax.broken_barh([(f.start_s, stop - f.start_s)], (y - 0.46, 0.92), facecolors=FREEZE_COLOUR,
                           edgecolor="#909090", hatch="///", linewidth=0.5, zorder=1)  # fmt: skip
            seen.add("freeze")
        bars = list(r.bars)
        if len(bars) > BARS_PER_ROW_MAX:
            bars = _merged(bars, end / (WIDTH_IN * DPI))
        widths = sorted(b.end_s - b.start_s for b in bars)
        px_per_s = WIDTH_IN * DPI / (end - start)
        thin = bool(widths) and widths[len(widths) // 2] * px_per_s < 6  # a white edge would hide them
        groups: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for b in bars:
            groups.setdefault((b.cls or r.cls, b.lied), []).append((b.start_s, max(b.end_s - b.start_s, 0.0)))
        for (cls, lied), spans in groups.items():
            ax.broken_barh(spans, (y - 0.36, 0.72), facecolors=LIE_COLOUR if lied else colour[cls],
                           edgecolor="white", linewidth=0.0 if thin else 0.4, zorder=2)  # fmt: skip
            seen.add("lie" if lied else "cls:" + cls)
        for f in r.fetches:
            stop = end if f.end_s is None else f.end_s
            ax.broken_barh([(f.start_s, stop - f.start_s)], (y + 0.22, 0.16), facecolors=FETCH_COLOUR,
                           edgecolor="#3b82c4", linewidth=0.5, zorder=3)  # fmt: skip
            seen.add("fetch")
        if r.leases:
            ax.plot(r.leases, [y - 0.42] * len(r.leases), linestyle="none", marker="v", markersize=3.5,
                    color="#333333", zorder=4)  # fmt: skip
            seen.add("lease")
        if r.joined_s is not None:
            ax.plot([r.joined_s], [y], linestyle="none", marker=">", markersize=7, color="tab:green",
                    zorder=5)  # fmt: skip
            seen.add("join")
        if r.left_s is not None:
            ax.plot([r.left_s], [y], linestyle="none", marker="X", markersize=8, color="black", zorder=5)
            seen.add("left")
    lines = []
    if tl.ideal_s is not None:
        lines.append(ax.axvline(tl.ideal_s, color="tab:green", linestyle="--", linewidth=1.6, zorder=6,
                                label=f"ideal frame time {tl.ideal_s:.2f} s (work / capacity)"))  # fmt: skip
    if tl.frame_s is not None:
        lines.append(ax.axvline(tl.frame_s, color="black", linewidth=1.4, zorder=6,
                                label=f"{tl.done_label} {tl.frame_s:.2f} s"))  # fmt: skip
    ax.set_xlim(start, end + (end - start) * 0.02)
    ax.set_ylim(max(n, 1) - 0.5, -0.5)
    ax.set_yticks(range(n), row_labels(rows), fontsize=8 if n > 24 else 9)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("peer (class)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    title = tl.title + (f": first {n} of {len(tl.rows)} peers" if len(tl.rows) > n else f" on {n} peers")
    if tl.frame_s is None:
        title += f" (frame not complete at {tl.end_s:.2f} s)"
    ax.set_title(title, fontsize=11, loc="left")

    def marker(m: str, c: str, label: str, size: float):
        return Line2D([], [], linestyle="none", marker=m, color=c, markersize=size, label=label)

    handles = [Patch(facecolor=colour[c], label=f"unit on {c}") for c in classes if "cls:" + c in seen]
    handles += [
        h
        for key, h in (
            ("lie", Patch(facecolor=LIE_COLOUR, label="wrong result (lie)")),
            ("fetch", Patch(facecolor=FETCH_COLOUR, edgecolor="#3b82c4", label="fetching the scene")),
            ("freeze", Patch(facecolor=FREEZE_COLOUR, edgecolor="#909090", hatch="///", label="frozen")),
            ("lease", marker("v", "#333333", "lease granted", 5)),
            ("join", marker(">", "tab:green", "joined", 7)),
            ("left", marker("X", "black", "left the party", 8)),
        )
        if key in seen
    ]
    handles += lines
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=9,
                   frameon=False)  # fmt: skip
    return fig


def draw(tl: Timeline, path: str | Path) -> Path:
    """Write the timeline's figure as a PNG at `path` (its folder made if need be)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(tl).savefig(path, format="png")
    return path


def png_bytes(tl: Timeline) -> bytes:
    """The timeline's figure as PNG bytes (what the web page serves)."""
    import io

    buf = io.BytesIO()
    figure(tl).savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------- a real job's job.json
Epoch = Annotated[float, Meta(ge=0.0, le=EPOCH_S_MAX)]
Seconds = Annotated[float, Meta(ge=0.0, le=JOB_S_MAX)]
PeerId = Annotated[str, Meta(min_length=1, max_length=PEER_ID_CHARS_MAX)]
Label = Annotated[str, Meta(max_length=LABEL_CHARS_MAX)]
Count = Annotated[int, Meta(ge=0, le=1 << 30)]


class _Unit(msgspec.Struct, frozen=True):
    peer: PeerId
    backend: Label
    seconds: Seconds
    at_s: Epoch
    width: Annotated[int, Meta(ge=1, le=1 << 16)] = 1
    height: Annotated[int, Meta(ge=1, le=1 << 16)] = 1
    pass_index: Count = 0
    pass_count: Annotated[int, Meta(ge=1, le=1 << 20)] = 1


class _Lease(msgspec.Struct, frozen=True):
    t_s: Seconds
    peer: PeerId
    units: Count = 0


class _Settings(msgspec.Struct, frozen=True):
    width: Annotated[int, Meta(ge=1, le=1 << 16)]
    height: Annotated[int, Meta(ge=1, le=1 << 16)]
    spp: Annotated[int, Meta(ge=1, le=1 << 24)]
    pass_spp: Annotated[int, Meta(ge=1, le=1 << 24)]


class _Job(msgspec.Struct, frozen=True):
    job_id: Annotated[str, Meta(max_length=128)]
    finished_s: Epoch
    units: Annotated[list[_Unit], Meta(max_length=JOB_UNITS_MAX)]
    started_s: Epoch | None = None
    coordinator: Annotated[str, Meta(max_length=PEER_ID_CHARS_MAX)] = ""
    leases: Annotated[list[_Lease], Meta(max_length=JOB_LEASES_MAX)] = []
    settings: _Settings | None = None


def _samples(u: _Unit, s: _Settings | None) -> int:
    if s is None:
        return u.pass_count
    first = min(s.spp, u.pass_index * s.pass_spp)
    return max(min(s.spp, (u.pass_index + u.pass_count) * s.pass_spp) - first, 0)


def timeline_from_job(job_json: dict, *, source: str = "job.json") -> Timeline:
    """The timeline of a real job from its `job.json` (as parsed JSON).

    A unit's bar ends when the coordinator accepted it (`at_s`) and starts its render time
    (`seconds`, the worker's own measure) before that, so the gap between bars is transfer and
    waiting. Times count from `started_s` (the first unit's start if it is missing). Leases are
    marked where job.json puts them (`t_s`, counted from when this run of the coordinator began
    leasing: after a resume they are the last run's). A peer's class is the backend that rendered
    its units ("cuda", "x64": a peer whose GPU fell back to its CPU shows both). The ideal frame
    time is the work (pixels x samples) over the party's capacity (each peer's measured rate,
    added up), as if every peer had been there from the start and never waited. Errors name the
    field and start with `source`."""
    if not isinstance(job_json, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(job_json).__name__}")
    try:
        job = msgspec.convert(job_json, type=_Job)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{source}: {exc}") from None
    origin = job.started_s
    if origin is None:
        origin = min((u.at_s - u.seconds for u in job.units), default=job.finished_s)
    frame_s = job.finished_s - origin
    if not -JOB_S_MAX <= frame_s <= JOB_S_MAX:
        raise ValueError(f"{source}: finished_s is {frame_s:.0f} s from started_s: not one job's span")
    for i, u in enumerate(job.units):
        if abs(u.at_s - origin) > JOB_S_MAX:
            raise ValueError(f"{source}: units[{i}].at_s is {u.at_s - origin:.0f} s from started_s")
    bars: dict[str, list[Bar]] = {}
    backends: dict[str, Counter[str]] = {}
    cost: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    for u in job.units:
        end = u.at_s - origin
        bars.setdefault(u.peer, []).append(Bar(end - u.seconds, end, cls=u.backend or "?"))
        backends.setdefault(u.peer, Counter())[u.backend or "?"] += 1
        cost[u.peer] += u.width * u.height * _samples(u, job.settings)
        busy[u.peer] += u.seconds
    leases: dict[str, list[float]] = {}
    for lease in job.leases:
        leases.setdefault(lease.peer, []).append(lease.t_s)
    first = {p: min(b.start_s for b in bs) for p, bs in bars.items()}
    first.update({p: min(first.get(p, ts[0]), ts[0]) for p, ts in leases.items()})
    order = sorted(first, key=lambda p: (p != job.coordinator, first[p], p))
    rows = []
    for p in order:
        by = backends.get(p, Counter())
        cls = "+".join(b for b, _ in by.most_common()) if by else "no units"
        own = [Bar(b.start_s, b.end_s) if b.cls == cls else b for b in bars.get(p, [])]
        rows.append(Row(peer=p, cls=cls, bars=tuple(own), leases=tuple(sorted(leases.get(p, []))),
                        coordinator=p == job.coordinator))  # fmt: skip
    rate = sum(cost[p] / busy[p] for p in cost if busy[p] > 0)
    ideal = sum(cost.values()) / rate if rate > 0 and all(busy[p] > 0 for p in cost) else None
    s = job.settings
    size = f"{s.width}x{s.height} {s.spp} spp, " if s is not None else ""
    title = f"job {job.job_id[:12]}: {size}{len(job.units)} units"
    end = max([frame_s, *(b.end_s for r in rows for b in r.bars), *(t for r in rows for t in r.leases)])
    return Timeline(title=title, rows=tuple(rows), end_s=end, frame_s=frame_s, ideal_s=ideal,
                    done_label="job done, files written")  # fmt: skip


def read_job_json(path: str | Path, *, bytes_max: int = 256 << 20) -> dict:
    """Parse a job.json file (a results folder's, or any path), refusing one over `bytes_max`."""
    path = Path(path)
    if path.is_dir():
        path = path / "job.json"
    try:
        size = path.stat().st_size
        if size > bytes_max:
            raise ValueError(f"{path}: {size:,} bytes; a job.json of more than {bytes_max:,} is not read")
        with path.open("rb") as f:
            data = f.read(bytes_max + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > bytes_max:
        raise ValueError(f"{path}: more than {bytes_max:,} bytes; not read")
    try:
        return msgspec.json.decode(data)  # strict JSON (no NaN), nesting bounded
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None

"""The per-peer timeline figure: a reader can tell which row is which peer, what each colour and
mark means and when things happened (axis label, one labelled row per peer, legend, the ideal and
actual frame times), for a real job's job.json (built by the coordinator's own record writer) and
a simulated run alike; a malformed job.json is refused naming its field."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from meshrender.cli import main
from meshrender.coordinate import job_provenance
from meshrender.jobs import JobSpec, UnitRecord
from meshrender.settings import RenderSettings
from meshrender.timeline import (
    ROWS_MAX,
    Bar,
    Row,
    Span,
    Timeline,
    draw,
    figure,
    png_bytes,
    short_ids,
    timeline_from_job,
)
from meshrender.units import frame_units
from sim.engine import Sim
from sim.scenario import Event, FrameSpec, PeerClass, Scenario, SceneSpec
from sim.timeline import draw_timeline, timeline_from_sim

T0 = 1_780_000_000.0  # the job's start, wall-clock epoch seconds
# two libp2p-like ids whose last four characters agree: their short names must still differ
COORD = "12D3KooWCoordinatorAAAAAAAAAAAAAAAAAAAAAAAAAAAAAx7Qa"
WORKER = "12D3KooWWorkerBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBx7Qa"


def legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def row_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_yticklabels()]


def vline_at(fig, prefix: str) -> float:
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_label().startswith(prefix)]
    xs = set(line.get_xdata())
    assert len(xs) == 1
    return float(xs.pop())


def everything() -> Timeline:
    return Timeline(
        title="hand-made",
        rows=(
            Row("p0", "gpu", bars=(Bar(0, 1), Bar(1, 2)), leases=(0.0,), coordinator=True),
            Row("p1", "cpu", bars=(Bar(2, 3, lied=True),), fetches=(Span(0, 2),), left_s=3.5),
            Row("p2", "cpu", bars=(Bar(4, 5),), freezes=(Span(1, 4), Span(5.5, None)), joined_s=0.5),
        ),
        end_s=6.0,
        frame_s=6.0,
        ideal_s=4.25,
    )


def test_the_figure_says_what_everything_is():
    fig = figure(everything())
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time (s)"
    assert row_texts(fig) == ["p0 (gpu, coordinator)", "p1 (cpu)", "p2 (cpu)"]
    legend = legend_texts(fig)
    for entry in ("unit on cpu", "unit on gpu", "wrong result (lie)", "fetching the scene", "frozen",
                  "lease granted", "joined", "left the party"):  # fmt: skip
        assert entry in legend
    assert any(t.startswith("ideal frame time 4.25 s") for t in legend)
    assert any(t.startswith("frame done 6.00 s") for t in legend)
    assert vline_at(fig, "ideal") == 4.25 and vline_at(fig, "frame done") == 6.0
    assert ax.get_xlim()[1] >= 6.0


def test_the_legend_lists_only_what_is_drawn():
    tl = Timeline("plain", rows=(Row("p0", "cpu", bars=(Bar(0, 1),)),), end_s=1.0, frame_s=None)
    fig = figure(tl)
    assert legend_texts(fig) == ["unit on cpu"]
    assert "not complete" in fig.axes[0].get_title(loc="left")


def test_the_png_is_written_and_decodes(tmp_path):
    path = draw(everything(), tmp_path / "sub" / "t.png")
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.width == 1200 and img.height > 200
    assert png_bytes(everything())[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_big_party_draws_its_first_rows_and_says_so():
    rows = tuple(Row(f"p{i}", "cpu", bars=(Bar(i * 0.01, i * 0.01 + 1),)) for i in range(ROWS_MAX + 7))
    fig = figure(Timeline("big", rows=rows, end_s=2.0, frame_s=2.0))
    assert len(row_texts(fig)) == ROWS_MAX and row_texts(fig)[-1] == f"p{ROWS_MAX - 1} (cpu)"
    assert f"first {ROWS_MAX} of {ROWS_MAX + 7} peers" in fig.axes[0].get_title(loc="left")


def test_short_ids_stay_distinct():
    names = short_ids([COORD, WORKER, "p3"])
    assert names["p3"] == "p3"
    assert names[COORD].startswith("12D3Ko…") and names[COORD].endswith("x7Qa")
    assert names[COORD] != names[WORKER] and len(names[COORD]) < 24


# ---- a real job's job.json ----------------------------------------------------------------------


def job_json() -> dict:
    """A job.json as the coordinator writes it: 64x64, 8 spp in passes of 4, 32 px buckets (8 equal
    units). The coordinator renders 2 units at 1 s each, on its CPU; the worker 6 at 0.5 s each,
    5 on its GPU and one (a fallback) on its CPU."""
    settings = RenderSettings(width=64, height=64, spp=8, pass_spp=4, bucket_px=32)
    spec = JobSpec(scene_id="ab" * 32, settings=settings)
    units = frame_units(settings)
    assert len(units) == 8
    results = []
    for i, u in enumerate(units[:2]):  # the coordinator: done at 1.5 s and 2.5 s
        results.append(UnitRecord(unit=u, chunk=f"{i:064x}", peer=COORD, backend="x64", seconds=1.0,
                                  at_s=T0 + 1.5 + i))  # fmt: skip
    for i, u in enumerate(units[2:]):  # the worker: done at 1.0, 1.5, ... 3.5 s
        backend = "x64" if i == 3 else "cuda"
        results.append(UnitRecord(unit=u, chunk=f"{i + 2:064x}", peer=WORKER, backend=backend, seconds=0.5,
                                  at_s=T0 + 1.0 + 0.5 * i))  # fmt: skip
    leases = [(0.01, COORD, 2), (0.02, WORKER, 2), (1.4, WORKER, 4)]
    return job_provenance("f0" * 32, spec, backend_class="any", coordinator=COORD, submitted_s=T0 - 3,
                          started_s=T0, results=results, outputs=[], lease_log=leases,
                          finished_s=T0 + 3.75)  # fmt: skip


def test_a_job_json_becomes_its_timeline():
    tl = timeline_from_job(json.loads(json.dumps(job_json())))  # as read back from the file
    coord, worker = tl.rows
    assert (coord.peer, coord.cls, coord.coordinator) == (COORD, "x64", True)
    assert [(b.start_s, b.end_s) for b in coord.bars] == [(0.5, 1.5), (1.5, 2.5)]
    assert worker.cls == "cuda+x64" and len(worker.bars) == 6
    assert worker.bars[0].start_s == pytest.approx(0.5) and worker.bars[-1].end_s == pytest.approx(3.5)
    assert [b.cls for b in worker.bars].count("x64") == 1  # the fallback unit keeps its own class
    assert coord.leases == (0.01,) and worker.leases == (0.02, 1.4)
    assert tl.frame_s == pytest.approx(3.75)
    # capacity: the coordinator does a unit a second, the worker two: 8 units take 8 / 3 s
    assert tl.ideal_s == pytest.approx(8 / 3)
    fig = figure(tl)
    assert row_texts(fig)[0].endswith("(x64, coordinator)") and row_texts(fig)[1].endswith("(cuda+x64)")
    assert row_texts(fig)[0] != row_texts(fig)[1]
    assert {"unit on cuda", "unit on x64", "lease granted"} <= set(legend_texts(fig))
    assert vline_at(fig, "ideal") == pytest.approx(8 / 3)
    assert vline_at(fig, "job done") == pytest.approx(3.75)


def broken(path: str, value) -> dict:
    """job_json() with the field at `path` (dots and list indices) set to `value`, or deleted."""
    doc = json.loads(json.dumps(job_json()))
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = doc
    for k in parents:
        node = node[k]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    "path, value, says",
    [
        ("units", KeyError, "units"),
        ("units.1.at_s", "soon", r"units\[1\]\.at_s"),
        ("units.2.seconds", -1.0, r"units\[2\]\.seconds"),
        ("units.0.at_s", float("nan"), r"units\[0\]\.at_s"),
        ("units.0.at_s", float("inf"), r"units\[0\]\.at_s"),
        ("units.0.at_s", T0 + 400 * 86400, r"units\[0\]\.at_s"),
        ("units.3.peer", "x" * 1000, r"units\[3\]\.peer"),
        ("units.3.peer", 7, r"units\[3\]\.peer"),
        ("units.0.width", 0, r"units\[0\]\.width"),
        ("leases.0.t_s", -0.5, r"leases\[0\]\.t_s"),
        ("leases", {"t_s": 1}, "leases"),
        ("finished_s", T0 + 10 * 366 * 86400, "finished_s"),
        ("settings.spp", "many", r"settings\.spp"),
    ],
)
def test_a_malformed_job_json_is_refused_naming_the_field(path, value, says):
    with pytest.raises(ValueError, match=says):
        timeline_from_job(broken(path, value))


def test_not_an_object_is_refused():
    with pytest.raises(ValueError, match="expected a JSON object"):
        timeline_from_job([job_json()])


def test_the_cli_draws_a_job_folders_timeline(tmp_path, capsys):
    folder = tmp_path / "results" / "job"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(job_json()))
    assert main(["timeline", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["timeline"] == str(folder / "timeline.png") and out["units"] == 8 and out["peers"] == 2
    with Image.open(folder / "timeline.png") as img:
        img.load()
        assert img.width == 1200
    assert main(["timeline", str(folder / "job.json"), "-o", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").stat().st_size > 1000


def test_the_cli_refuses_bad_files_with_one_line(tmp_path, capsys):
    bad = tmp_path / "job.json"
    bad.write_text(json.dumps(broken("units.1.at_s", "soon")))
    assert main(["timeline", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "units[1].at_s" in err
    bad.write_text('{"units": [')
    assert main(["timeline", str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["timeline", str(tmp_path / "nowhere")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "timeline.png").exists()


# ---- a simulated run ----------------------------------------------------------------------------


def eventful() -> Scenario:
    """A small party with something of everything: a scene to fetch, a liar, a freeze, a drop, a join."""
    return Scenario(
        name="eventful",
        peers=[PeerClass(name="gpu", count=2, speed=4.0), PeerClass(name="cpu", count=4, speed=1.0)],
        frame=FrameSpec(units=120, unit_cost_s=0.2),
        scene=SceneSpec(bytes=20_000_000, holders=1),
        events=[
            Event(at=0.0, kind="liar", count=1, cls="cpu", lie_p=1.0),
            Event(at=1.0, kind="freeze", count=1, cls="cpu", until=2.5),
            Event(at=2.0, kind="drop", count=1, cls="gpu"),
            Event(at=1.5, kind="join", count=1, cls="cpu"),
        ],
    )


def test_a_simulated_run_draws_the_same_figure(tmp_path):
    sim = Sim(eventful(), seed=4)
    report = sim.run()
    assert report.violations == [] and report.frame_s is not None
    tl = timeline_from_sim(sim)
    assert [r.peer for r in tl.rows] == list(sim.peers)
    assert sum(len(r.bars) for r in tl.rows) == sum(len(p.bars) for p in sim.peers.values())
    assert any(b.lied for r in tl.rows for b in r.bars)
    assert tl.frame_s == report.frame_s and tl.ideal_s == pytest.approx(report.ideal_s)
    assert sum(len(r.leases) for r in tl.rows) == report.leases
    fig = figure(tl)
    assert row_texts(fig) == [f"p{i} ({c}{', coordinator' if i == 0 else ''})"
                              for i, c in enumerate(["gpu"] * 2 + ["cpu"] * 5)]  # fmt: skip
    for entry in ("unit on cpu", "unit on gpu", "wrong result (lie)", "fetching the scene", "frozen",
                  "lease granted", "joined", "left the party"):  # fmt: skip
        assert entry in legend_texts(fig)
    assert vline_at(fig, "frame done") == report.frame_s
    path = draw_timeline(sim, tmp_path / "timeline.png")
    with Image.open(path) as img:
        img.load()
        assert img.width == 1200

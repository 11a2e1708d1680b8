"""`meshrender stream` on a 3-peer loopback party: two headless members and a streaming peer; the
test saves the scene file (a camera move, then a half-written file, then a material change) and
the party re-renders each saved version at once, every preview of one version, both members
rendering; the half-written file changes nothing."""

from __future__ import annotations

import shutil
import time

import pytest
from conftest import REPO
from party import PeerProc

WORKER = ("--threads", "1", "--backend", "cpu")
STREAM = ("--res", "48x32", "--spp", "6", "--pass-spp", "1", "--tile", "16", "--no-web", "--json")
START_S = 120  # render processes start on the shared kernel cache; a loaded machine is slow
VERSION_S = 60  # from a save to the new version's converged preview


def _previews(peer: PeerProc, version: int) -> list[dict]:
    return [e for e in peer.events if e["event"] == "preview" and e["version"] == version]


def _wait_converged(peer: PeerProc, version: int) -> dict:
    return peer.wait_for("preview", timeout=VERSION_S, version=version, pass_done=6)


@pytest.mark.slow
def test_saving_the_scene_file_re_renders_it_across_a_three_peer_party(tmp_path):
    scene_dir = tmp_path / "scene"
    shutil.copytree(REPO / "meshrender" / "data" / "cornell", scene_dir)
    toml = scene_dir / "cornell.toml"
    members = [PeerProc(tmp_path / f"m{i}", *WORKER) for i in range(2)]
    streamer = None
    try:
        for m in members:
            m.wait_for("renderer-state", timeout=START_S, state="ready")
        boot = [a for m in members for a in ("--bootstrap", m.addr)]
        streamer = PeerProc(tmp_path / "s", *WORKER, *STREAM, *boot, command=("stream", str(toml)))
        streamer.wait_for("stream-started", timeout=START_S)
        first = _wait_converged(streamer, 1)
        assert first["samples"] == 6

        text = toml.read_text()
        saved = time.monotonic()
        toml.write_text(text.replace("position = [0.0, 0.0, 3.9]", "position = [0.4, 0.1, 3.9]"))
        reloaded = streamer.wait_for("reloaded", timeout=VERSION_S, version=2)
        _wait_converged(streamer, 2)
        assert reloaded["files"] == ["cornell.toml"] and reloaded["seconds"] < 5

        toml.write_text(text[: len(text) // 2])  # an editor's half-written save
        failed = streamer.wait_for("edit-failed", timeout=VERSION_S)
        assert "cornell.toml" in failed["reason"]

        mtl = scene_dir / "cornell_box.mtl"  # a file the scene names: watched too
        toml.write_text(text.replace("position = [0.0, 0.0, 3.9]", "position = [0.4, 0.1, 3.9]"))
        mtl.write_text(mtl.read_text().replace("Kd 0.570068 0.0430135 0.0443706", "Kd 0.1 0.5 0.1", 1))
        deadline = time.monotonic() + VERSION_S
        while not any(e["event"] == "reloaded" and e["version"] >= 3 for e in streamer.events):
            assert time.monotonic() < deadline, streamer.events[-10:]
            time.sleep(0.1)
        v3 = max(e["version"] for e in streamer.events if e["event"] == "reloaded")
        _wait_converged(streamer, v3)

        # previews come in order: never an older version after a newer, passes growing within one
        keys = [(e["version"], e["pass_done"]) for e in streamer.events if e["event"] == "preview"]
        assert keys == sorted(keys), keys
        assert all(e["version"] >= 2 for e in streamer.events[streamer.events.index(reloaded):]
                   if e["event"] == "preview")  # fmt: skip
        rendered_by = {p for e in streamer.events if e["event"] == "preview" for p in e["peers"]}
        assert {m.peer_id for m in members} & rendered_by, rendered_by  # members render versions
        assert time.monotonic() - saved < 3 * VERSION_S
    finally:
        for p in [streamer, *members]:
            if p is not None:
                p.stop()

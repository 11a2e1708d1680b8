"""Streaming sessions on real peers: two peers in one process (a coordinator that renders and a
member, real libp2p on loopback, real render processes) stream the Cornell box while the test
edits it — camera, material, light — and every frame shows one version; a converged version is
bit-identical to a one-peer render of that version; a camera move adds one small chunk."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from meshrender.node import Peer
from meshrender.settings import RenderSettings
from meshrender.streaming import StreamEnded, StreamSession

SECRET = b"a-good-long-secret"
SETTINGS = RenderSettings(width=32, height=24, spp=4, pass_spp=1, max_depth=4, bucket_px=16)
EDITS_FOR_BOTH_MAX = 40  # camera moves until the member has rendered part of a frame
SESSION_S_MAX = 240  # two render processes start on a warm kernel cache, then tiny units


def _local_render(scene_id: str, store_root, settings: RenderSettings) -> np.ndarray:
    from meshrender.render import Renderer, render_frame
    from meshrender.store.chunkstore import ChunkStore
    from meshrender.store.scenes import load_compiled

    with ChunkStore(store_root) as store:
        compiled = load_compiled(store, scene_id)
    return render_frame(Renderer(compiled, backend="cpu", threads=1), settings).image()


async def _converge(watch, version: int) -> list:
    """Frames until `version` has every pass; every frame must be of one version, passes growing."""
    frames = []
    while True:
        f = await watch.next()
        frames.append(f)
        if f.version == version and f.pass_done == f.pass_count:
            return frames


@pytest.mark.slow
def test_a_session_streams_edits_across_two_peers_and_converges_to_the_render_of_each_version(tmp_path):
    from meshrender.scene.load import load_scene

    desc = load_scene("cornell")
    coord = Peer(home=tmp_path / "c", party="p", secret=SECRET, backend="cpu", threads=1)
    member = Peer(home=tmp_path / "m", party="p", secret=SECRET, backend="cpu", threads=1)
    out: dict = {}

    async def main():
        async with trio.open_nursery() as n:
            await n.start(member.run)
            await n.start(coord.run)
            assert await coord.dial(f"{member.addrs[0]}/p2p/{member.peer_id}") == member.peer_id
            session = StreamSession(coord, desc, SETTINGS)
            await coord.start_stream(session)
            assert coord.streams.current() is session and session.version == 1
            with trio.fail_after(SESSION_S_MAX), session.watch("test") as w:
                v1 = await _converge(w, 1)
                out["v1"] = (session.core.scene.scene_id, v1[-1].image.copy())
                out["peers"] = set(v1[-1].peers)
                while member.peer_id not in session.crew.workers:  # its renderer may start later
                    await trio.sleep(0.05)
                cam = desc.camera
                v2 = await session.set_camera(position=(cam.position[0] + 0.3, *cam.position[1:]))
                out["edit2"] = dict(session.last_edit)
                frames = await _converge(w, v2)
                out["v2"] = (session.core.scene.scene_id, frames[-1].image.copy())
                out["after_edit"] = frames
                name = session.status()["materials"][0]["name"]
                v3 = await session.set_material(name, color=(0.9, 0.1, 0.1), roughness=0.3)
                lights = session.status()["lights"]
                p = lights[0]["position"]
                v4 = await session.move_light(0, (p[0] + 0.1, p[1], p[2]))
                assert v4 > v3 > v2
                frames = await _converge(w, v4)
                out["v4"] = (session.core.scene.scene_id, frames[-1].image.copy())
                out["after_v4"] = frames
                # a remote member fetches each version's new chunks first, so on a frame this small
                # our own renderer may finish a version alone; within a few edits both render
                for step in range(1, EDITS_FOR_BOTH_MAX + 1):
                    if member.peer_id in {p for f in out["after_v4"] for p in f.peers}:
                        break
                    v = await session.set_camera(position=(cam.position[0] - 0.01 * step, *cam.position[1:]))
                    out["after_v4"] += await _converge(w, v)
                out["versions"] = session.version
                with pytest.raises(ValueError, match="look_at"):
                    await session.set_camera(position=cam.look_at, look_at=cam.look_at)
                with pytest.raises(ValueError, match="no material"):
                    await session.set_material("no such material", color=(1, 1, 1))
                out["status"] = session.status()
                session.stop()
                with pytest.raises(StreamEnded):
                    while True:
                        await w.next()
            n.cancel_scope.cancel()

    trio.run(main)
    for key in ("v1", "v2", "v4"):
        scene_id, image = out[key]
        assert np.array_equal(image, _local_render(scene_id, tmp_path / "c" / "store", SETTINGS)), key
    assert out["v1"][0] != out["v2"][0] != out["v4"][0]
    assert not np.array_equal(out["v1"][1], out["v2"][1])
    # the camera move compiled nothing but the camera: its chunk and the manifest are new
    edit = out["edit2"]
    assert edit["camera_only"] and edit["chunks_new"] <= 2 and edit["bytes_new"] < 16 << 10, edit
    # after an edit the frames are of the new version only: (version, passes) only ever grows
    for frames, version in ((out["after_edit"], 2), (out["after_v4"], 4)):
        keys = [(f.version, f.pass_done) for f in frames if f.version >= version]
        assert keys and keys == sorted(set(keys)), keys
        assert all(f.samples == f.pass_done * SETTINGS.pass_spp for f in frames)
    assert out["status"]["version"] == out["versions"] and out["status"]["edits"] == out["versions"] - 1
    seen = {p for f in out["after_edit"] + out["after_v4"] for p in f.peers}
    assert seen == {coord.peer_id, member.peer_id}, (seen, out["status"]["results"])  # both rendered


def test_edits_are_checked_before_anything_changes(tmp_path):
    from meshrender.scene.load import load_scene

    desc = load_scene("cornell")
    peer = Peer(home=tmp_path / "c", party="p", secret=SECRET, render=False)
    session = StreamSession(peer, desc, SETTINGS)

    async def main():
        for bad, match in (
            ({"position": (float("nan"), 0, 0)}, "finite"),
            ({"position": "up"}, "three numbers"),
            ({"fov_deg": 0}, "fov_deg"),
            ({"up": (0, 0, 1e9)}, "within"),
        ):
            with pytest.raises(ValueError, match=match):
                await session.set_camera(**bad)
        name = session.status()["materials"][0]["name"]
        for bad, match in (({"color": (2, 0, 0)}, "reflectance"), ({"roughness": -1}, "roughness"),
                           ({"ior": 0.5}, "ior")):  # fmt: skip
            with pytest.raises(ValueError, match=match):
                await session.set_material(name, **bad)
        with pytest.raises(ValueError, match="no light"):
            await session.move_light(99, (0, 0, 0))

    trio.run(main)
    assert session._asked == 0 and session._desc is desc  # nothing was edited
    assert session.status()["camera"]["position"] == list(desc.camera.position)


def test_an_orbit_keeps_the_target_and_distance_and_stops_short_of_the_poles():
    from meshrender.scene.types import CameraDesc
    from meshrender.viewport import POLE_MARGIN_DEG, orbit_camera

    cam = CameraDesc(position=(1.0, 0.5, 4.0), look_at=(1.0, 0.5, 0.0))
    for yaw, pitch in ((90, 0), (-45, 30), (10, -60), (0, 179)):
        moved = orbit_camera(cam, yaw_deg=yaw, pitch_deg=pitch)
        assert moved.look_at == cam.look_at
        offset = np.subtract(moved.position, moved.look_at)
        assert np.linalg.norm(offset) == pytest.approx(4.0)
        elevation = np.degrees(np.arcsin(offset[1] / 4.0))
        assert elevation == pytest.approx(min(pitch, 90 - POLE_MARGIN_DEG), abs=1e-6)
    assert orbit_camera(cam, yaw_deg=90).position == pytest.approx((5.0, 0.5, 0.0))
    assert orbit_camera(cam, dolly=0.5).position == pytest.approx((1.0, 0.5, 2.0))
    panned = orbit_camera(cam, pan=(0.25, 0.0))  # a quarter of the distance to the right
    assert panned.look_at == pytest.approx((2.0, 0.5, 0.0))
    assert panned.position == pytest.approx((2.0, 0.5, 4.0))
    for bad in ({"yaw_deg": float("inf")}, {"dolly": 0}, {"pan": (1e9, 0)}, {"pan": "left"}):
        with pytest.raises(ValueError):
            orbit_camera(cam, **bad)


@pytest.mark.slow
def test_a_script_opens_a_session_edits_it_and_reads_its_frames(tmp_path):
    """The Python API: `Session.open` runs a peer with one session; edits and frames() work on it."""
    from meshrender.script import open_session

    seen: list = []

    async def main():
        with trio.fail_after(SESSION_S_MAX):
            async with open_session("cornell", home=tmp_path / "h", party="solo", secret="a-long-solo-secret",
                                    settings=SETTINGS, backend="cpu", threads=1) as s:  # fmt: skip
                version = await s.set_material(s.status()["materials"][0]["name"], color=(0.2, 0.7, 0.2))
                async for frame in s.frames():
                    seen.append(frame)
                    if frame.version == version and frame.pass_done == frame.pass_count:
                        out = (s.core.scene.scene_id, frame.image.copy())
                        break
        return out

    scene_id, image = trio.run(main)
    assert seen[-1].version == 2 and {f.version for f in seen} <= {1, 2}
    assert np.array_equal(image, _local_render(scene_id, tmp_path / "h" / "store", SETTINGS))


def test_moving_the_cornell_boxs_light_moves_its_emitting_triangles_only():
    """The built-in box is one mesh: its light splits off and moves; the walls stay put."""
    from meshrender.scene.load import load_scene
    from meshrender.streaming import moved_light, scene_lights

    desc = load_scene("cornell")
    lights = scene_lights(desc)
    assert [li["kind"] for li in lights] == ["area"]
    p = np.array(lights[0]["position"])
    moved = moved_light(desc, 0, p + (0.2, -0.1, 0.0))
    after = scene_lights(moved)
    assert after[0]["position"] == pytest.approx(list(p + (0.2, -0.1, 0.0)), abs=1e-5)
    walls = [m for i, m in enumerate(moved.meshes) if i != after[0]["mesh"]]
    old_tris = sum(len(m.indices) for m in desc.meshes)
    assert sum(len(m.indices) for m in moved.meshes) == old_tris  # nothing lost, nothing doubled
    light_mesh = moved.meshes[after[0]["mesh"]]
    assert len(light_mesh.indices) < old_tris / 4  # the light alone, not the box
    box = np.concatenate([np.asarray(m.positions) for m in walls])
    before = np.asarray(desc.meshes[0].positions)
    assert np.isin(box.round(5), before.round(5)).all()  # every wall vertex where it was
    with pytest.raises(ValueError, match="no light"):
        moved_light(desc, 1, (0, 0, 0))

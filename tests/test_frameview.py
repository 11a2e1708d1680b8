"""The coordinator's live view of a frame (the TUI's Frame tab): buckets owned by the peer that
leased them, passes counted as results are accepted, a preview that converges to the image, the
next frame taken up when one completes, and the text the TUI draws from it."""

from __future__ import annotations

import base64
import os

import numpy as np

from meshrender.frameview import FrameView
from meshrender.units import WorkUnit
from tui.widgets import frame_text


def units(frames=(0,), size=64, bucket=32, passes=2):
    return [
        WorkUnit(frame=f, x0=x, y0=y, width=bucket, height=bucket, pass_index=k)
        for f in frames
        for k in range(passes)
        for y in range(0, size, bucket)
        for x in range(0, size, bucket)
    ]


def sums(u: WorkUnit, value: float, samples: int = 4) -> np.ndarray:
    return np.full((u.pass_count, u.height, u.width, 3), value * samples, np.float32)


def test_buckets_follow_leases_and_results_and_the_preview_converges():
    us = units()
    v = FrameView("j" * 64, 64, 64, 2, us)
    assert len(v.rects) == 4 and v.owner == [-1] * 4
    v.leased("a", us[:2])
    v.leased("b", us[2:4])
    assert v.owner == [0, 0, 1, 1] and v.peers == ["a", "b"]
    for u in us[:4]:
        v.accepted("a" if u.x0 == 0 and u.y0 == 0 or u.y0 == 0 else "b", u, sums(u, 0.25), [4])
    assert v.done == [1, 1, 1, 1]
    pix = v.preview()
    assert pix.shape == (64, 64, 3)
    expected = round((1.055 * 0.25 ** (1 / 2.4) - 0.055) * 255)  # 0.25 linear in sRGB
    assert abs(int(pix[10, 10, 0]) - expected) <= 1
    js = v.to_json()
    assert js["owner"] == [0, 0, 1, 1] and js["done"] == [1, 1, 1, 1] and js["frame"] == 0
    rgb = np.frombuffer(base64.b64decode(js["preview"]["rgb"]), np.uint8)
    assert rgb.size == 64 * 64 * 3


def test_a_completed_frame_moves_the_view_to_the_next():
    us = units(frames=(3, 4), passes=1)
    v = FrameView("j" * 64, 64, 64, 1, us)
    assert v.frame == 3
    for u in us[:4]:
        v.accepted("a", u, sums(u, 1.0), [4])
    assert v.frame == 4 and v.done == [0, 0, 0, 0] and int(v.preview().max()) == 0
    v.accepted("a", us[4], sums(us[4], 1.0), [4])
    assert v.done == [1, 0, 0, 0]


def test_a_big_frame_previews_in_cells_and_the_tui_draws_it():
    us = units(size=512, bucket=64, passes=1)
    v = FrameView("j" * 64, 512, 512, 1, us)
    assert v.preview_size == (96, 64)
    v.leased("a", us[:10])
    for u in us[:10]:
        v.accepted("a", u, sums(u, 0.5), [4])
    text = frame_text(v.to_json(), 80, 20)
    from rich.console import Console

    with open(os.devnull, "w") as sink:
        Console(file=sink, width=80).print(text)  # every style in it parses
    assert "frame 0" in text.plain and "512x512" in text.plain and text.plain.count("██") == 10
    assert "▀" in text.plain and "··" in text.plain
    assert max(len(line) for line in text.plain.splitlines()) <= 80


def test_the_finished_frame_shows_its_denoised_image_and_says_so():
    us = units(passes=1)
    v = FrameView("j" * 64, 64, 64, 1, us)
    den = np.zeros((64, 64, 3), np.float32)
    den[:, 32:] = 1.0  # the "denoised" frame: black left half, white right half
    v.show_final(0, den)  # too early: the frame is not all in
    for u in us:
        v.accepted("a", u, sums(u, 0.25), [4])
    before = v.preview().copy()
    assert v.to_json()["denoised"] is False
    v.show_final(0, den[:32])  # the wrong size is ignored
    v.show_final(1, den)  # and a frame not shown
    assert np.array_equal(v.preview(), before)
    v.show_final(0, den)
    pix = v.preview()
    assert int(pix[5, 5].max()) == 0 and int(pix[5, 60].min()) == 255
    v.finished = True
    js = v.to_json()
    assert js["denoised"] is True and js["finished"] is True
    assert "done, denoised" in frame_text(js, 120, 40).plain

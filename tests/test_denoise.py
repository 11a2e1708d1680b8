"""Denoising the assembled frame with Open Image Denoise: better images, files beside the noisy
ones, and a render that still succeeds (and says why) when the denoiser cannot run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import msgspec
import numpy as np
import pytest
from conftest import REPO

from meshrender.denoise import DENOISE_PX_MAX, DenoiseError, denoise
from meshrender.output import read_exr
from meshrender.render import render_frame
from meshrender.settings import RenderSettings

NOISY = RenderSettings(width=64, height=64, spp=4, pass_spp=4, bucket_px=32, max_depth=8)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2)))


def test_denoising_with_features_brings_a_4_spp_frame_closer_to_a_converged_one(cornell, renderer_for):
    r = renderer_for(cornell)
    noisy = render_frame(r, NOISY)
    clean = render_frame(r, msgspec.structs.replace(NOISY, spp=256, pass_spp=64, seed=9)).image()
    albedo, normal = noisy.aov_images()
    with_aux = denoise(noisy.image(), albedo, normal, threads=2)
    alone = denoise(noisy.image(), threads=2)
    assert with_aux.features == "albedo+normal" and alone.features == "none"
    # below the lamp (whose clipped glow OIDN spreads a little either way): walls and boxes
    below = (slice(16, None), slice(None))
    before = rmse(noisy.image()[below], clean[below])
    assert rmse(with_aux.image[below], clean[below]) < 0.3 * before
    # and the features help: edges and the boxes' faces come out closer than from colour alone
    assert rmse(with_aux.image[below], clean[below]) < 0.98 * rmse(alone.image[below], clean[below])
    # the features keep the box's edges: the denoised walls stay as far apart in colour
    left, right = with_aux.image[20:44, 5:12].mean((0, 1)), with_aux.image[20:44, -12:-5].mean((0, 1))
    assert left[0] > 2 * left[1] and right[1] > 2 * right[0]


def test_bad_input_is_refused_before_anything_is_allocated():
    huge = np.broadcast_to(np.zeros(3, np.float32), (DENOISE_PX_MAX // 4096 + 1, 4096, 3))  # no memory
    with pytest.raises(DenoiseError, match="pixels"):
        denoise(huge)
    img = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(DenoiseError, match="needs an albedo"):
        denoise(img, normal=img)
    with pytest.raises(DenoiseError, match="albedo image is"):
        denoise(img, np.zeros((8, 9, 3), np.float32))


RENDER = """
import sys
if sys.argv[1] == "no-oidn":
    sys.modules["pyoidn"] = None  # as on a machine where the wheel is not installed
from meshrender.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run(mode: str, *args: str):
    return subprocess.run([sys.executable, "-c", RENDER, mode, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_denoise_in_the_scene_file_writes_denoised_files_beside_the_noisy_ones(tmp_path):
    scene = tmp_path / "box"
    shutil.copytree(REPO / "meshrender" / "data" / "cornell", scene)
    toml = scene / "cornell.toml"
    toml.write_text(toml.read_text().replace("max_depth = 8\n", "max_depth = 8\ndenoise = true\n", 1))
    out = tmp_path / "frame.exr"
    p = run("oidn", "render", str(toml), "--res", "48x40", "--spp", "2", "--backend", "cpu", "--threads", "2",
            "--json", "-o", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["settings"]["denoise"] is True
    den = rec["denoise"]
    assert den["features"] == "albedo+normal" and den["seconds"] > 0
    assert den["outputs"] == [str(tmp_path / "frame.denoised.exr"), str(tmp_path / "frame.denoised.png")]
    noisy, clean = read_exr(out), read_exr(tmp_path / "frame.denoised.exr")
    assert clean.shape == noisy.shape == (40, 48, 3)
    # the same light, far less noise: neighbouring pixels of the back wall differ much less
    assert abs(clean.mean() - noisy.mean()) < 0.15 * noisy.mean()
    wall = (slice(8, 20), slice(14, 34))
    assert np.abs(np.diff(clean[wall], axis=1)).mean() < 0.5 * np.abs(np.diff(noisy[wall], axis=1)).mean()
    assert (tmp_path / "frame.denoised.png").stat().st_size > 0
    assert json.loads((tmp_path / "frame.json").read_text())["denoise"] == den


def test_without_the_library_the_noisy_frame_is_written_and_the_record_says_why(tmp_path):
    out = tmp_path / "frame.png"
    p = run("no-oidn", "render", "cornell", "--res", "16x16", "--spp", "1", "--backend", "cpu", "--denoise",
            "--json", "-o", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert "not installed" in rec["denoise"]["error"] and "pyoidn" in rec["denoise"]["error"]
    assert "no denoised image" in p.stderr and "Traceback" not in p.stderr
    assert out.exists() and (tmp_path / "frame.exr").exists()
    assert not list(tmp_path.glob("*.denoised.*"))


@pytest.mark.slow
def test_the_coordinator_of_a_party_job_denoises_the_assembled_frame(tmp_path):
    from party import PARTY, SECRET, PeerProc

    worker = PeerProc(tmp_path / "w", "--threads", "1", "--backend", "cpu")
    try:
        out = tmp_path / "party.png"
        p = subprocess.run(
            [sys.executable, "-m", "meshrender", "render", "cornell", "--party", PARTY, "--secret", SECRET,
             "--bootstrap", worker.addr, "--home", str(tmp_path / "c"), "--threads", "1", "--backend", "cpu",
             "--res", "48x48", "--spp", "8", "--pass-spp", "4", "--tile", "16", "--denoise", "--json",
             "-o", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        worker.stop()
    assert p.returncode == 0, p.stderr[-3000:]
    # every unit's albedo and normal came back with its radiance: the whole frame had features
    assert "denoised (features: albedo+normal)" in p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    job_dir = tmp_path / "c" / "results" / summary["job_id"]
    den = job_dir / "frame_0000.denoised.exr"
    assert str(den) in summary["outputs"] and (job_dir / "frame_0000.denoised.png").exists()
    noisy, clean = read_exr(job_dir / "frame_0000.exr"), read_exr(den)
    assert clean.shape == noisy.shape == (48, 48, 3) and not np.array_equal(clean, noisy)
    # beside -o OUT as well, the same pixels
    assert np.array_equal(read_exr(tmp_path / "party.denoised.exr"), clean)
    assert (tmp_path / "party.denoised.png").exists()

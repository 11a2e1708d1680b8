"""Mitsuba 3 references for the XML scenes in tests/data/mitsuba/, made by Mitsuba itself.

How: this script runs in a Python that has pip `mitsuba` (3.9.1) — not the project's venv —
with the `llvm_ad_rgb` variant on 2 threads. For each scene it writes the generated sky
(`sky.exr`, the env_sun scene's envmap, made from numpy here so it is reproducible), renders the
reference at REF_SPP samples per pixel (passes of PASS_SPP with distinct seeds, averaged) into
`NAME.ref.exr` (float32 RGB), then renders the scene at 64 spp with SEEDS_64 seeds and stores
the RMSE of each against the reference in `refs.json` (the images are not kept; for the
Cornell box of tests/data/cornell_mitsuba only these, against its committed reference): that is
Mitsuba's own 64-spp noise, which tests/test_scene_mitsuba.py holds meshrender to (1.1x). The
JSON also records the RGB eta/k Mitsuba uses for its conductor presets and the IORs of its
named dielectrics, so the importer's tables can be checked against the renderer they mimic.

    python3 -m venv ../mitsuba-venv && ../mitsuba-venv/bin/pip install mitsuba==3.9.1 numpy
    apt-get install -y libllvm19
    DRJIT_LIBLLVM_PATH=/usr/lib/x86_64-linux-gnu/libLLVM-19.so \\
        ../mitsuba-venv/bin/python bench/mitsuba_refs.py [--ref-spp 4096] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data" / "mitsuba"
SCENES = ("rough_glass", "smooth_glass_caustic", "rough_gold", "plastic", "env_sun", "punctual", "bunny_box")
CORNELL = HERE.parent / "tests" / "data" / "cornell_mitsuba"
# scenes whose reference is committed already: only Mitsuba's own 64-spp RMSE against it is made
KEPT = {
    "cornell_box": (CORNELL / "cornell_box_boxfilter.xml", CORNELL / "reference_4096spp_boxfilter.exr", 4096)
}
REF_SPP = 4096  # the reference's own noise adds < 1% to a 64-spp RMSE (variance 64/4096)
REF_SPP_BY_SCENE = {"smooth_glass_caustic": 16384}  # a caustic through glass converges slowly
PASS_SPP = 256  # one mi.render call: bounds Dr.Jit's memory on a 128x128 frame
SEEDS_64 = (1, 2, 3, 4, 5)  # 64-spp renders per scene; the references use seeds from 1000 up
THREADS = 2
SKY_PX = (128, 64)  # the generated envmap: small, smooth, with a bright warm patch to find
PRESET_CONDUCTORS = ("Au", "Ag", "Cu", "Al", "Cr")
PRESET_IORS = ("vacuum", "air", "water", "bk7", "polypropylene", "diamond", "acrylic glass", "pyrex")


def write_sky(path: Path) -> None:
    """A latitude-longitude sky, +y up: blue above, brown below the horizon, and a warm glow
    30 degrees above the horizon towards +x (u = 0.25 in Mitsuba's mapping) to tell rotations apart."""
    import mitsuba as mi

    w, h = SKY_PX
    v = (np.arange(h) + 0.5) / h
    u = (np.arange(w) + 0.5) / w
    theta = v[:, None] * np.pi
    phi = u[None, :] * 2 * np.pi
    d = np.stack(
        np.broadcast_arrays(np.sin(theta) * np.sin(phi), np.cos(theta), -np.sin(theta) * np.cos(phi)), -1
    )
    up = np.clip(d[..., 1], 0, 1)[..., None]
    sky = np.where(d[..., 1:2] > 0, (1 - up) * [0.9, 1.0, 1.1] + up * [0.3, 0.5, 1.0], [0.25, 0.18, 0.12])
    glow_dir = np.array([np.cos(np.radians(30)), np.sin(np.radians(30)), 0.0])
    glow = np.clip(d @ glow_dir, 0, 1) ** 24
    img = (sky + glow[..., None] * [8.0, 5.0, 2.0]).astype(np.float32)
    mi.Bitmap(img).write(str(path))


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def render(mi, scene, spp: int, seed: int) -> np.ndarray:
    return np.array(mi.render(scene, spp=spp, seed=seed), np.float32)[..., :3]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-spp", type=int, default=REF_SPP)
    ap.add_argument("--only", nargs="*", default=None, help="scene names (default: all)")
    args = ap.parse_args()
    try:
        import drjit as dr
        import mitsuba as mi
    except ImportError as e:
        print(f"mitsuba_refs: needs pip mitsuba (see the docstring): {e}", file=sys.stderr)
        return 2
    mi.set_variant("llvm_ad_rgb")
    dr.set_thread_count(THREADS)

    out_json = DATA / "refs.json"
    record = json.loads(out_json.read_text()) if out_json.exists() else {}
    record["mitsuba"] = {"version": mi.__version__, "variant": mi.variant(), "threads": THREADS}
    record["presets"] = {
        "conductors": {
            m: {
                k: [
                    float(x)
                    for x in np.array(
                        mi.traverse(mi.load_dict({"type": "conductor", "material": m}))[f"{k}.value"]
                    ).reshape(-1)
                ]
                for k in ("eta", "k")
            }
            for m in PRESET_CONDUCTORS
        },
        "iors": {
            n: float(
                np.array(
                    mi.traverse(mi.load_dict({"type": "dielectric", "int_ior": n, "ext_ior": "vacuum"}))[
                        "eta"
                    ]
                ).reshape(-1)[0]
            )
            for n in PRESET_IORS
        },
    }
    write_sky(DATA / "sky.exr")
    scenes = record.setdefault("scenes", {})
    for name in args.only or (*SCENES, *KEPT):
        t0 = time.perf_counter()
        if name in KEPT:
            xml, ref_path, passes = KEPT[name][0], KEPT[name][1], KEPT[name][2] // PASS_SPP
            scene = mi.load_file(str(xml))
            ref = np.array(mi.Bitmap(str(ref_path)), np.float32)[..., :3]
        else:
            scene = mi.load_file(str(DATA / f"{name}.xml"))
            ref_spp = args.ref_spp if args.ref_spp != REF_SPP else REF_SPP_BY_SCENE.get(name, REF_SPP)
            passes = max(1, ref_spp // PASS_SPP)
            acc = None
            for k in range(passes):
                img = render(mi, scene, PASS_SPP, 1000 + k).astype(np.float64)
                acc = img if acc is None else acc + img
            ref = (acc / passes).astype(np.float32)
            mi.Bitmap(ref).write(str(DATA / f"{name}.ref.exr"))
        t1 = time.perf_counter()
        errors = [rmse(render(mi, scene, 64, s), ref) for s in SEEDS_64]
        t2 = time.perf_counter()
        h, w = ref.shape[:2]
        scenes[name] = {
            "resolution": [w, h],
            "ref_spp": passes * PASS_SPP,
            "mean_rgb": [float(x) for x in ref.reshape(-1, 3).mean(0)],
            "rmse_64spp": errors,
            "rmse_64spp_mean": float(np.mean(errors)),
            "ref_seconds": round(t1 - t0, 2),
            "samples_per_second_64spp": round(len(SEEDS_64) * 64 * w * h / (t2 - t1)),
        }
        print(
            f"{name}: mean {scenes[name]['mean_rgb']} rmse64 {np.mean(errors):.5f} ({t1 - t0:.1f} s ref)",
            flush=True,
        )
    out_json.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DRJIT_LIBLLVM_PATH", "/usr/lib/x86_64-linux-gnu/libLLVM-19.so")
    raise SystemExit(main())

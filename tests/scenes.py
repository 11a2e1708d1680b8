"""Small scenes built in code for the render tests."""

from __future__ import annotations

import numpy as np

from meshrender.scene.types import (
    CameraDesc,
    EnvironmentDesc,
    LoadedScene,
    MaterialDesc,
    MeshData,
    TextureImage,
)
from meshrender.settings import RenderSettings


def icosphere(subdivisions: int = 2, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    t = (1 + 5**0.5) / 2
    v = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
         (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]  # fmt: skip
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
         (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
         (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]  # fmt: skip
    verts = [np.array(p, float) / np.linalg.norm(p) for p in v]
    faces = f
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def mid(a, b, cache=cache):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        nf = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            nf += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = nf
    return (np.array(verts) * radius).astype(np.float32), np.array(faces, np.int32)


def furnace_scene(
    material: MaterialDesc, env_level: float = 0.5, env_image: bool = False, smooth: bool = False
) -> LoadedScene:
    """A unit sphere in a uniform environment, seen from z = 4."""
    pos, idx = icosphere(3)
    mesh = MeshData(
        name="sphere",
        positions=pos,
        indices=idx,
        material_ids=np.zeros(len(idx), np.int32),
        materials=[material],
        normals=pos.copy() if smooth else None,
    )
    if env_image:
        img = TextureImage("uniform.exr", np.full((16, 32, 3), env_level, np.float32))
        env = EnvironmentDesc(color=(1.0, 1.0, 1.0), image=img)
    else:
        env = EnvironmentDesc(color=(env_level,) * 3)
    cam = CameraDesc(position=(0, 0, 4), look_at=(0, 0, 0), fov_deg=35.0)
    settings = RenderSettings(width=48, height=48, spp=64, pass_spp=64, max_depth=64, rr_depth=64)
    return LoadedScene("furnace", [mesh], cam, env, settings)

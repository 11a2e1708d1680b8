"""A small textured glTF asset, made here so the tests need nothing outside the repository.

`write_textured(folder)` writes `textured.gltf` (+ `textured.bin` and its images beside it) and
`textured.glb` (the same document with the buffer and every image inside). The asset is a
helmet-like toy on a stand: six glTF meshes drawn as seven (the lens is instanced twice, once
mirrored), one mesh with two primitives and two materials, a node tree with translation,
rotation, non-uniform scale and a matrix, float, uint8 and uint16 indices, normalized uint16
texture coordinates, five base colour textures (four PNG, one JPEG, one shared by two
materials) and the helmet's other slots (metallicRoughnessTexture, normal and occlusion
textures, alphaMode BLEND), as the Khronos FlightHelmet has them.

The committed copy in tests/data/textured_gltf/ is what `python tests/textured.py` writes.
`texture_px=(W, H)` replaces each base colour image by seeded noise of that size (PNG, stored
uncompressed so it is quick to write): a big scene of many content-defined chunks for the store
and swarm tests, made in the test's own folder rather than committed.
"""

from __future__ import annotations

import io
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parent / "data" / "textured_gltf"
NAME = "textured"

# what the tests check against (the committed asset; the noise variant has the same geometry)
MESHES = ["Dome", "Visor", "Frame", "Strap", "Lens", "Lens", "Stand"]  # as loaded, in node order
TRIANGLES = {"Dome": 768, "Visor": 192, "Frame": 768, "Strap": 24, "Lens": 96, "Stand": 12}
BASE_COLOR_IMAGES = ["leather.png", "metal.png", "glass.png", "rubber.png", "wood.jpg"]
ROOT_T = (0.0, 0.1, 0.0)  # the Helmet node: +0.1 in y, then 30 degrees about +y
ROOT_YAW_DEG = 30.0
STAND_MATRIX = [1.2, 0, 0, 0, 0, 0.1, 0, 0, 0, 0, 0.8, 0, 0, 0.05, 0, 1]  # column-major: scale, then +0.05 y


# ------------------------------------------------------------------------------ geometry


def _grid(nu: int, nv: int, f):
    """A (nu+1) x (nv+1) vertex grid from f(u, v) -> (positions, normals), u and v in [0, 1]."""
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1))
    pos, nrm = f(u.ravel(), v.ravel())
    uv = np.stack([u.ravel(), v.ravel()], 1)
    i = np.arange(nv)[:, None] * (nu + 1) + np.arange(nu)[None, :]
    a, b, c, d = i.ravel(), i.ravel() + 1, i.ravel() + nu + 1, i.ravel() + nu + 2
    tris = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    return pos, nrm, uv, tris


def dome(r=0.35):
    def f(u, v):
        phi, theta = 2 * np.pi * u, 0.55 * np.pi * v  # from the pole down to a little past the equator
        n = np.stack([np.sin(theta) * np.cos(phi), np.cos(theta), -np.sin(theta) * np.sin(phi)], 1)
        return r * n, n

    return _grid(32, 12, f)


def visor(r=0.37):
    def f(u, v):
        phi, y = np.pi * (0.3 + 0.4 * u), 0.1 + 0.15 * v  # a strip of a cylinder in front (+z)
        n = np.stack([np.cos(phi), np.zeros_like(phi), np.sin(phi)], 1)
        return np.stack([r * n[:, 0], y, r * n[:, 2]], 1), n

    return _grid(16, 6, f)


def torus(big=0.36, small=0.03):
    def f(u, v):
        phi, psi = 2 * np.pi * u, 2 * np.pi * v
        ring = np.stack([np.cos(phi), np.zeros_like(phi), -np.sin(phi)], 1)
        n = ring * np.cos(psi)[:, None] + np.array([0, 1, 0]) * np.sin(psi)[:, None]
        return big * ring + small * n, n

    pos, nrm, uv, tris = _grid(32, 12, f)
    return pos, nrm, uv, tris[:, [0, 2, 1]]


def box(size, center=(0, 0, 0)):
    """24 vertices (a flat normal per face), 12 triangles, counter-clockwise from outside."""
    P, N, UV, T = [], [], [], []
    for axis in range(3):
        for sign in (-1, 1):
            n = np.zeros(3)
            n[axis] = sign
            a, b = (axis + 1) % 3, (axis + 2) % 3  # e_a x e_b = e_axis
            if sign < 0:
                a, b = b, a
            corners = []
            for s, t in ((0, 0), (1, 0), (1, 1), (0, 1)):
                p = np.zeros(3)
                p[axis], p[a], p[b] = sign * 0.5, s - 0.5, t - 0.5
                corners.append(p)
            base = len(P)
            P += corners
            N += [n] * 4
            UV += [(0, 0), (1, 0), (1, 1), (0, 1)]
            T += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    pos = np.array(P) * np.array(size) + np.array(center)
    return pos, np.array(N), np.array(UV, float), np.array(T)


def lens(r=0.06, depth=0.03, seg=24):
    """A short cylinder along +z with both caps: 48 side and 48 cap triangles."""
    P, N, UV, T = [], [], [], []
    ang = 2 * np.pi * np.arange(seg) / seg
    c, s = np.cos(ang), np.sin(ang)
    for z in (0.0, depth):  # side rings
        for k in range(seg):
            P.append((r * c[k], r * s[k], z))
            N.append((c[k], s[k], 0))
            UV.append((k / seg, z / depth))
    for k in range(seg):
        k2 = (k + 1) % seg
        T += [(k, k2, seg + k), (k2, seg + k2, seg + k)]
    for z, nz in ((0.0, -1.0), (depth, 1.0)):  # caps, each a fan around its own centre vertex
        centre = len(P)
        P.append((0, 0, z))
        N.append((0, 0, nz))
        UV.append((0.5, 0.5))
        for k in range(seg):
            P.append((r * c[k], r * s[k], z))
            N.append((0, 0, nz))
            UV.append((0.5 + 0.5 * c[k], 0.5 + 0.5 * s[k]))
        for k in range(seg):
            a, b = centre + 1 + k, centre + 1 + (k + 1) % seg
            T.append((centre, a, b) if nz > 0 else (centre, b, a))
    return np.array(P), np.array(N), np.array(UV), np.array(T)


# ------------------------------------------------------------------------------ images


def _png(pixels: np.ndarray, compress_level: int = 9) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _checker(w, h, cell, a, b):
    y, x = np.mgrid[0:h, 0:w]
    on = ((x // cell + y // cell) % 2).astype(bool)
    return np.where(on[..., None], np.uint8(a), np.uint8(b)).astype(np.uint8)


def images(texture_px: tuple[int, int] | None = None) -> dict[str, bytes]:
    """Every image file of the asset by name: base colour textures first, in BASE_COLOR_IMAGES order."""
    y, x = np.mgrid[0:64, 0:64]
    glass = np.stack([40 + x * 2, 90 + y, np.full_like(x, 230)], -1).astype(np.uint8)
    rubber = _checker(128, 64, 8, (30, 30, 30), (200, 40, 30))  # not square: rows stay rows
    rubber[:, 60:68] = (240, 220, 40)
    out = {
        "leather.png": _png(_checker(128, 128, 16, (150, 90, 40), (230, 190, 120))),
        "metal.png": _png(np.repeat(_checker(128, 1, 4, (90, 90, 100), (220, 220, 230)), 128, axis=0)),
        "glass.png": _png(glass),
        "rubber.png": _png(rubber),
    }
    buf = io.BytesIO()
    wood = _checker(128, 128, 32, (120, 70, 30), (60, 140, 60))
    Image.fromarray(wood).save(buf, format="JPEG", quality=90)
    out["wood.jpg"] = buf.getvalue()
    if texture_px is not None:
        rng = np.random.default_rng(15)
        w, h = texture_px
        for name in BASE_COLOR_IMAGES:
            noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if name.endswith(".jpg"):
                buf = io.BytesIO()
                Image.fromarray(noise).save(buf, format="JPEG", quality=95)
                out[name] = buf.getvalue()
            else:
                out[name] = _png(noise, compress_level=0)
    out["normal.png"] = _png(np.full((16, 16, 3), (128, 128, 255), np.uint8))
    out["orm_leather.png"] = _png(np.full((16, 16, 3), (255, 204, 10), np.uint8))  # rough 0.8, metal 0.04
    out["orm_metal.png"] = _png(np.full((16, 16, 3), (255, 77, 242), np.uint8))  # rough 0.3, metal 0.95
    return out


# ------------------------------------------------------------------------------ document


class _Doc:
    def __init__(self):
        self.bin = bytearray()
        self.doc: dict = {"asset": {"version": "2.0", "generator": "meshrender tests/textured.py"}}
        for k in ("accessors", "bufferViews", "meshes", "nodes", "materials", "textures", "images"):
            self.doc[k] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        self.bin += b"\0" * (-len(self.bin) % 4)
        bv = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data)}
        if target:
            bv["target"] = target
        self.bin += data
        self.doc["bufferViews"].append(bv)
        return len(self.doc["bufferViews"]) - 1

    def accessor(self, arr: np.ndarray, type_: str, ctype: int, normalized=False, bounds=False) -> int:
        target = 34963 if type_ == "SCALAR" else 34962
        acc = {"bufferView": self.view(arr.tobytes(), target), "componentType": ctype, "type": type_}
        acc["count"] = len(arr) if type_ != "SCALAR" else arr.size
        if normalized:
            acc["normalized"] = True
        if bounds:
            acc["min"], acc["max"] = arr.min(0).tolist(), arr.max(0).tolist()
        self.doc["accessors"].append(acc)
        return len(self.doc["accessors"]) - 1

    def primitive(self, geom, material: int, index_type=np.uint16, uv_u16=False) -> dict:
        pos, nrm, uv, tris = geom
        attrs = {
            "POSITION": self.accessor(pos.astype(np.float32), "VEC3", 5126, bounds=True),
            "NORMAL": self.accessor(nrm.astype(np.float32), "VEC3", 5126),
        }
        if uv_u16:
            q = np.round(np.clip(uv, 0, 1) * 65535).astype(np.uint16)
            attrs["TEXCOORD_0"] = self.accessor(q, "VEC2", 5123, normalized=True)
        else:
            attrs["TEXCOORD_0"] = self.accessor(uv.astype(np.float32), "VEC2", 5126)
        ctype = {np.uint8: 5121, np.uint16: 5123, np.uint32: 5125}[index_type]
        idx = self.accessor(tris.astype(index_type).ravel(), "SCALAR", ctype)
        return {"attributes": attrs, "indices": idx, "material": material}

    def mesh(self, name: str, prims: list[dict]) -> int:
        self.doc["meshes"].append({"name": name, "primitives": prims})
        return len(self.doc["meshes"]) - 1

    def node(self, **kw) -> int:
        self.doc["nodes"].append(kw)
        return len(self.doc["nodes"]) - 1


def _document() -> _Doc:
    d = _Doc()
    tex = {name: i for i, name in enumerate(images())}  # one texture per image, same order
    d.doc["images"] = [{"uri": name, "name": name} for name in tex]
    d.doc["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 10497, "wrapT": 10497}]
    d.doc["textures"] = [{"source": i, "sampler": 0} for i in tex.values()]

    def ref(name):
        return {"index": tex[name]}

    d.doc["materials"] = [
        {"name": "LeatherMat", "normalTexture": ref("normal.png"), "occlusionTexture": ref("orm_leather.png"),
         "pbrMetallicRoughness": {"baseColorTexture": ref("leather.png"),
                                  "metallicRoughnessTexture": ref("orm_leather.png")}},
        {"name": "MetalMat", "normalTexture": ref("normal.png"),
         "pbrMetallicRoughness": {"baseColorTexture": ref("metal.png"),
                                  "metallicRoughnessTexture": ref("orm_metal.png")}},
        {"name": "GlassMat", "alphaMode": "BLEND",
         "pbrMetallicRoughness": {"baseColorTexture": ref("glass.png"), "baseColorFactor": [1, 1, 1, 0.4],
                                  "metallicFactor": 0.0, "roughnessFactor": 0.1}},
        {"name": "LensMat",
         "pbrMetallicRoughness": {"baseColorTexture": ref("glass.png"), "baseColorFactor": [0.5, 0.8, 1, 1],
                                  "metallicFactor": 0.0, "roughnessFactor": 0.2}},
        {"name": "RubberMat", "occlusionTexture": ref("orm_leather.png"),
         "pbrMetallicRoughness": {"baseColorTexture": ref("rubber.png"), "metallicFactor": 0.0,
                                  "roughnessFactor": 0.9}},
        {"name": "WoodMat",
         "pbrMetallicRoughness": {"baseColorTexture": ref("wood.jpg"), "metallicFactor": 0.0}},
    ]  # fmt: skip
    leather, metal, glass, lens_m, rubber, wood = range(6)
    m_dome = d.mesh("Dome", [d.primitive(dome(), leather)])
    m_visor = d.mesh("Visor", [d.primitive(visor(), glass)])
    m_frame = d.mesh("Frame", [d.primitive(torus(), metal, index_type=np.uint32)])
    strap = d.primitive(box((0.05, 0.3, 0.02), (0, -0.1, 0)), rubber, index_type=np.uint8)
    buckle = d.primitive(box((0.08, 0.05, 0.03), (0, -0.2, 0)), metal, index_type=np.uint8)
    m_strap = d.mesh("Strap", [strap, buckle])
    m_lens = d.mesh("Lens", [d.primitive(lens(), lens_m)])
    m_stand = d.mesh("Stand", [d.primitive(box((1, 1, 1)), wood, uv_u16=True)])
    yaw = math.radians(ROOT_YAW_DEG) / 2
    kids = [
        d.node(name="DomeNode", mesh=m_dome, translation=[0, 0.35, 0]),
        d.node(name="VisorNode", mesh=m_visor, translation=[0, 0.3, 0]),
        d.node(name="FrameNode", mesh=m_frame, translation=[0, 0.35, 0], scale=[1, 0.5, 1]),
        d.node(name="StrapNode", mesh=m_strap, translation=[0.3, 0.3, 0]),
        d.node(name="LensLeft", mesh=m_lens, translation=[0.12, 0.45, 0.3]),
        d.node(name="LensRight", mesh=m_lens, translation=[-0.12, 0.45, 0.3], scale=[-1, 1, 1]),
    ]
    root = d.node(name="Helmet", children=kids, translation=list(ROOT_T),
                  rotation=[0, math.sin(yaw), 0, math.cos(yaw)])  # fmt: skip
    stand = d.node(name="StandNode", mesh=m_stand, matrix=STAND_MATRIX)
    d.doc["scenes"] = [{"name": "Scene", "nodes": [root, stand]}]
    d.doc["scene"] = 0
    return d


def write_textured(folder: Path, texture_px: tuple[int, int] | None = None, glb: bool | None = None) -> Path:
    """Write textured.gltf/.bin/images and (by default only without `texture_px`) textured.glb into
    `folder`; returns the .gltf path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = _document()
    files = images(texture_px)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / f"{NAME}.bin").write_bytes(bytes(d.bin))
    doc = dict(d.doc, buffers=[{"uri": f"{NAME}.bin", "byteLength": len(d.bin)}])
    (folder / f"{NAME}.gltf").write_text(json.dumps(doc, indent=1) + "\n")
    if glb is False or (glb is None and texture_px is not None):
        return folder / f"{NAME}.gltf"
    # the .glb: the same document, every image moved into the binary chunk
    g = _Doc()
    g.doc, g.bin = json.loads(json.dumps(d.doc)), bytearray(d.bin)
    for img in g.doc["images"]:
        name = img.pop("uri")
        img["bufferView"] = g.view(files[name])
        img["mimeType"] = "image/jpeg" if name.endswith(".jpg") else "image/png"
    g.bin += b"\0" * (-len(g.bin) % 4)
    g.doc["buffers"] = [{"byteLength": len(g.bin)}]
    j = json.dumps(g.doc, separators=(",", ":")).encode()
    j += b" " * (-len(j) % 4)
    chunks = struct.pack("<II", len(j), 0x4E4F534A) + j + struct.pack("<II", len(g.bin), 0x004E4942) + g.bin
    (folder / f"{NAME}.glb").write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks)
    return folder / f"{NAME}.gltf"


if __name__ == "__main__":
    out = write_textured(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)
    size = sum(p.stat().st_size for p in out.parent.iterdir() if p.suffix != ".md")
    print(f"wrote {out.parent}: {size:,} bytes")

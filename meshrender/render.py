"""The render API: compiled scene + settings + a work unit in, per-pass float32 sums out.

`Renderer` starts the backend (once per process), uploads the scene's arrays to the device once,
and renders units by launching the tracer kernel once per pass of the unit. `render_frame`
renders a whole frame as buckets x passes into a `Film`, reporting progress after each unit.
Everything a unit's pixels get depends only on (scene, settings, frame, pixel, sample), so any
split of the frame, in any process, gives the same bits on the same backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from kernels.features import features_of

from .bvh_wide import triangle_rows, wide_nodes
from .compiled import LIGHT_ANGLE, LIGHT_KIND, LIGHT_SUN, CompiledScene
from .film import Film
from .heap import release_free_memory
from .scene.compile import camera_at, camera_tangents
from .settings import RenderSettings
from .units import AOV_CHANNELS, UnitResult, WorkUnit, frame_units

# sRGB-encoded byte -> linear float, for base-colour textures (decoded per texel in the kernel)
_c = np.arange(256, dtype=np.float64) / 255.0
SRGB_TO_LINEAR = np.where(_c <= 0.04045, _c / 12.92, ((_c + 0.055) / 1.055) ** 2.4).astype(np.float32)
del _c


@dataclass
class RenderStats:
    units: int = 0
    samples: int = 0  # pixel samples rendered
    render_s: float = 0.0  # time inside kernel launches (including the first compile)
    compile_s: float = 0.0  # the first launch's extra time: compilation or cache load


class Renderer:
    """Renders units of one compiled scene. Not thread-safe: one renderer per thread of use."""

    # on the CPU the kernel reads the scene's numpy arrays in place (_upload); off, they are copied
    # into Taichi ndarrays as for a GPU (what tests use to check that path on the CPU)
    host_arrays = True

    def __init__(self, scene: CompiledScene, *, backend: str = "auto", threads: int = 0):
        from kernels.backend import init_backend

        self.scene = scene
        self.backend = init_backend(backend, threads)
        import taichi as ti

        if not _TI_DTYPES:
            _init_dtypes()
        self._ti = ti
        t0 = time.perf_counter()
        try:
            self._upload()
        except RuntimeError as exc:  # the GPU is out of memory: on the CPU (re-raises anything else)
            self._fall_back(exc)
        self.upload_s = time.perf_counter() - t0
        self._out: dict[tuple[int, int], object] = {}
        self.stats = RenderStats()
        self._camera_frame: int | None = None  # the frame whose camera is on the device
        self._camera_row = scene.arrays["camera"]
        # sums through device buffers and a copy-out even on the CPU (what a GPU does): tests
        # compare the two ways
        self.device_out = False
        # the kernel for this scene's features (kernels/features.py): compiled, or loaded from
        # the disk cache, once per Taichi runtime for every scene with the same features
        self.features = features_of(scene.arrays)
        self._compiled = self._launched()
        self._n_emit = int(scene.arrays["emit_tri"].shape[0])
        self._n_tex = int(scene.arrays["tex_info"].shape[0])
        # next-event estimation's pick by power, made by the compiler (scene.compile._lights)
        self._p_env, self._p_tris = (float(p) for p in scene.arrays["light_pick"][:2])
        lights = scene.arrays["lights"]
        self._n_lights = int(lights.shape[0])
        suns = (lights[:, LIGHT_KIND] == LIGHT_SUN) & (lights[:, LIGHT_ANGLE] > 0)
        self._n_suns = int(np.count_nonzero(suns))  # the compiler puts them first

    def _launched(self) -> bool:
        """Whether this runtime has launched the kernel for our features (its compile is done)."""
        return _KERNEL_LAUNCHED[0] is self.backend and self.features in _KERNEL_LAUNCHED[1]

    def _upload(self) -> None:
        from kernels.backend import injected_fault

        ti = self._ti
        injected_fault("upload")  # a test's MESHRENDER_FAULT=gpu-oom, where Taichi would raise it
        # On the CPU the kernel reads numpy arrays where they are (Taichi passes their memory), so
        # the scene's arrays are not copied into Taichi's: 1.1M triangles kept about 120 MB twice.
        host = self.host_arrays and not self.backend.is_gpu

        def on_device(arr: np.ndarray, dtype, shape: tuple[int, ...]):
            if host:
                return np.ascontiguousarray(arr)
            nd = ti.ndarray(dtype=dtype, shape=shape)
            nd.from_numpy(arr)
            return nd

        self._dev = {}
        for name, arr in self.scene.arrays.items():
            if name in TRAVERSAL_SOURCES:  # the kernel reads traversal_arrays' rows instead
                continue
            if arr.shape[0] == 0:  # Taichi cannot allocate empty arrays: pad, counts say what is real
                arr = np.zeros((1, *arr.shape[1:]), arr.dtype)
            if host and name == "camera":  # rewritten for an animated scene's frames: its own copy
                arr = arr.copy()
            self._dev[name] = on_device(arr, _TI_DTYPES[arr.dtype.str], arr.shape)
        for name, arr in traversal_arrays(self.scene.arrays).items():  # one vector per row
            self._dev[name] = on_device(arr, ti.types.vector(arr.shape[1], ti.f32), arr.shape[:1])
        self._dev["srgb_lut"] = on_device(SRGB_TO_LINEAR, ti.f32, SRGB_TO_LINEAR.shape)
        release_free_memory()  # traversal_arrays' temporaries (meshrender.heap)

    def _fall_back(self, exc: RuntimeError) -> None:
        """Re-raise `exc` unless it is the device running out of memory; else restart Taichi on
        the CPU (kernels.backend.fall_back_to_cpu says so in the log) and upload the scene again."""
        from kernels.backend import fall_back_to_cpu, gpu_oom_reason

        oom = gpu_oom_reason(exc)
        if oom is None:
            raise exc
        self._dev, self._out = {}, {}  # the old runtime's arrays, gone with it
        self.backend = fall_back_to_cpu(oom)
        self._upload()
        self._compiled, self._camera_frame = self._launched(), None

    def _out_buffer(self, h: int, w: int):
        buf = self._out.get((h, w))
        if buf is None:
            if len(self._out) > 8:  # bounded: frames use at most 4 bucket shapes
                self._out.clear()
            buf = (
                self._ti.ndarray(dtype=self._ti.f32, shape=(h, w, 3)),
                self._ti.ndarray(dtype=self._ti.f32, shape=(h, w, AOV_CHANNELS)),
            )
            self._out[(h, w)] = buf
        return buf

    def render_unit(self, unit: WorkUnit, settings: RenderSettings | None = None) -> UnitResult:
        """Render `unit`; a GPU out of memory here renders it again on the CPU (`backend` says so)."""
        from kernels.backend import injected_fault

        stats = RenderStats(**vars(self.stats))  # passes done before the error are done again
        try:
            injected_fault("launch")  # a test's MESHRENDER_FAULT=gpu-oom-launch
            return self._render_unit(unit, settings)
        except RuntimeError as exc:
            self._fall_back(exc)
            self.stats = stats
            return self._render_unit(unit, settings)

    def _render_unit(self, unit: WorkUnit, settings: RenderSettings | None) -> UnitResult:
        from kernels.tracer import render_rect

        settings = settings or self.scene.settings
        unit.check(settings)
        camera = self._camera(unit.frame)
        tan_x, tan_y = camera_tangents(self._camera_row, settings.width, settings.height)
        d = self._dev
        sums = np.empty((unit.pass_count, unit.height, unit.width, 3), np.float32)
        aov_sums = np.empty((unit.pass_count, unit.height, unit.width, AOV_CHANNELS), np.float32)
        # on the CPU the kernel writes each pass's sums into these arrays as they are (Taichi
        # passes a numpy array's memory to a CPU kernel): no device buffer, and no copy-out
        # kernel launch per pass (two of the three launches a pass took)
        on_host = not self.backend.is_gpu and not self.device_out
        out, aov = (None, None) if on_host else self._out_buffer(unit.height, unit.width)
        counts = []
        for k, p in enumerate(unit.passes):
            if on_host:
                out, aov = sums[k], aov_sums[k]
            s0, s1 = settings.pass_range(p)
            t0 = time.perf_counter()
            render_rect(
                self.features, unit.x0, unit.y0, settings.width, settings.height, s0, s1,
                settings.seed, unit.frame, settings.max_depth, settings.rr_depth,
                tan_x, tan_y, self._n_emit, self._n_tex, self._p_env, self._p_tris,
                self._n_lights, self._n_suns,
                camera, d["positions"], d["normals"], d["uvs"], d["indices"], d["tri_material"],
                d["materials"], d["bvh_node"], d["tri_xf"],
                d["emit_tri"], d["emit_cdf"], d["tri_emit_pdf"], d["tex_texels"], d["tex_info"],
                d["tex_refs"], d["tangents"], d["env_params"], d["env_texels"],
                d["env_cond_cdf"], d["env_marg_cdf"], d["env_info"], d["lights"], d["srgb_lut"], out, aov,
            )  # fmt: skip
            if not on_host:
                sums[k] = out.to_numpy()
                aov_sums[k] = aov.to_numpy()
            dt = time.perf_counter() - t0
            if not self._compiled:
                self._compiled = True
                if _KERNEL_LAUNCHED[0] is not self.backend:  # a new runtime: nothing launched in it yet
                    _KERNEL_LAUNCHED[:] = [self.backend, set()]
                _KERNEL_LAUNCHED[1].add(self.features)
                self.stats.compile_s = dt
            self.stats.render_s += dt
            self.stats.samples += unit.pixels * (s1 - s0)
            counts.append(s1 - s0)
        self.stats.units += 1
        return UnitResult(unit=unit, sums=sums, sample_counts=counts, aov_sums=aov_sums)

    def _camera(self, frame: int):
        """The device camera for `frame` (an animated scene's is uploaded when the frame changes)."""
        if not self.scene.animated:
            self._camera_row = self.scene.arrays["camera"]
            return self._dev["camera"]
        if self._camera_frame != frame:
            self._camera_row = camera_at(self.scene.arrays, frame, source=self.scene.source)
            cam = self._dev["camera"]
            if isinstance(cam, np.ndarray):
                np.copyto(cam, self._camera_row)
            else:
                cam.from_numpy(self._camera_row)
            self._camera_frame = frame
        return self._dev["camera"]

    def warm_up(self) -> float:
        """Compile (or load from the disk cache) the kernel now; returns the seconds it took."""
        t0 = time.perf_counter()
        if not self._compiled:
            tiny = RenderSettings(width=1, height=1, spp=1, pass_spp=1, max_depth=1)
            self.render_unit(WorkUnit(x0=0, y0=0, width=1, height=1, pass_index=0), tiny)
            self.stats = RenderStats(compile_s=time.perf_counter() - t0)
        return time.perf_counter() - t0


TRAVERSAL_SOURCES = frozenset({"bvh_bounds", "bvh_links"})  # not uploaded: bvh_node holds them


def traversal_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the kernel's traversal reads, made at upload, each uploaded as one vector per row
    (one address computation per row in the kernel, not one per float):
      * `tri_xf` (triangles, TRI_FLOATS): each triangle's p0 and the transform to the unit
        triangle (meshrender.bvh_wide.triangle_rows) in leaf order, read by the triangle test and
        for face normals in place of indices and positions. Rows of p0 and the two edges before
        were 5% more samples per CPU-second than indices and positions on the Cornell box, up to
        8% on the bunny; the transform (one product per row of it, no cross products) then 1.03x
        on the Cornell box (issue 16's notes).
      * `bvh_node` (wide nodes, WIDE_FLOATS): the binary tree (bvh_bounds, bvh_links) collapsed
        into nodes of eight children (meshrender.bvh_wide): a traversal step reads one row and tests
        eight boxes. Nodes of four were 1.2-1.25x the rays per second of the binary walk, whose rows
        (one box and its links) they replaced; before that, rows as vectors in place of floats gave
        2-5%, and both child boxes in the parent's row gave nothing (issue 16's notes)."""
    tri_xf = triangle_rows(arrays["positions"], arrays["indices"])
    bvh_node = wide_nodes(arrays["bvh_bounds"], arrays["bvh_links"])
    return {"tri_xf": tri_xf, "bvh_node": bvh_node}


_TI_DTYPES: dict[str, object] = {}
# the BackendInfo of the Taichi runtime that has launched the kernel, and the features it was launched with
_KERNEL_LAUNCHED: list = [None, set()]


def _init_dtypes():
    import taichi as ti

    _TI_DTYPES.update({"<f4": ti.f32, "<i4": ti.i32, "|u1": ti.u8})


def render_frame(
    renderer: Renderer,
    settings: RenderSettings | None = None,
    *,
    frame: int = 0,
    units: Iterable[WorkUnit] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Film:
    """Render every unit of a frame (by default: buckets x passes, pass-major) into a Film."""
    settings = settings or renderer.scene.settings
    todo = list(units) if units is not None else frame_units(settings, frame=frame)
    film = Film(settings, frame)
    for n, unit in enumerate(todo, 1):
        film.add(renderer.render_unit(unit, settings))
        if progress is not None:
            progress(n, len(todo))
    return film

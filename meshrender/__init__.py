"""meshrender: a peer-to-peer path tracer.

Step 1 holds the local pieces every peer shares: scene loading and compilation into flat
arrays (`meshrender.scene`, `meshrender.compiled`), the work units a frame splits into and the
film that adds them back in canonical order (`meshrender.units`, `meshrender.film`), and the
render API that drives the Taichi kernels (`meshrender.render`).
"""

__version__ = "0.1.0"

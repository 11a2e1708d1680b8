"""Taichi kernels. Importing this package never calls `ti.init`; `kernels.backend.init_backend`
does, once per process, and says which backend it got and why."""

import os

# Taichi prints a banner on stdout when imported; stdout belongs to `--json` output.
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")

"""Taichi kernels. Importing this package never calls `ti.init`; `kernels.backend.init_backend`
does, once per process, and says which backend it got and why."""

import os

# Taichi prints a banner on stdout when imported; stdout belongs to `--json` output.
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
# Taichi aborts the process (a C++ assertion) when neither HOME nor XDG_CACHE_HOME is set, as
# under some service managers; expanduser falls back to the password database.
if "HOME" not in os.environ and "XDG_CACHE_HOME" not in os.environ:
    os.environ["XDG_CACHE_HOME"] = os.path.join(os.path.expanduser("~"), ".cache")

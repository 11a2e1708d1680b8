"""Taichi kernels. Importing this package never calls `ti.init`; `kernels.backend.init_backend`
does, once per process, and says which backend it got and why."""

"""A viewport's camera and the checks of edit values, with no I/O: streaming sessions, the web
page's Stream view and the TUI's Stream tab (through the local socket) share them.

`orbit_camera` turns a camera about its target (look_at) as a viewport's drag does: yaw about
the camera's up axis, pitch over the target (stopping POLE_MARGIN_DEG short of the poles), dolly
(scale the distance), pan (slide camera and target in the image plane, in units of the
distance). `vec3`, `number` and `reflectance` check an edit's values and raise ValueError naming the
field and what it must be.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

COORD_MAX = 1e6  # |x| of a camera or light position: a scene is not a planet; larger is a typo
DOLLY_MIN = 0.01  # one orbit step moves the camera at most 100x nearer or farther
PAN_MAX = 10.0  # one pan step slides at most this many target distances
POLE_MARGIN_DEG = 1.0  # an orbit stops this far from straight over (or under) the target


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """`v` turned by `angle` radians about the unit `axis` (Rodrigues)."""
    c, s = math.cos(angle), math.sin(angle)
    return v * c + np.cross(axis, v) * s + axis * float(np.dot(axis, v)) * (1 - c)


def orbit_camera(cam, *, yaw_deg: float = 0.0, pitch_deg: float = 0.0, dolly: float = 1.0,
                 pan: tuple[float, float] = (0.0, 0.0)):  # fmt: skip
    """`cam` (a CameraDesc) turned `yaw_deg` about its up axis and `pitch_deg` over its target
    (look_at), its distance scaled by `dolly`, camera and target slid by `pan` (right, up) in
    units of that distance. The pitch stops POLE_MARGIN_DEG short of the poles."""
    yaw = number("yaw_deg", yaw_deg, -360.0, 360.0)
    pitch = number("pitch_deg", pitch_deg, -180.0, 180.0)
    scale = number("dolly", dolly, DOLLY_MIN, 1.0 / DOLLY_MIN)
    try:
        dx, dy = (number("pan", v, -PAN_MAX, PAN_MAX) for v in pan)
    except (TypeError, ValueError):
        raise ValueError(f"pan must be two numbers within ±{PAN_MAX:g}, not {pan!r}") from None
    pos, target = np.asarray(cam.position, np.float64), np.asarray(cam.look_at, np.float64)
    up = np.asarray(cam.up, np.float64)
    up /= np.linalg.norm(up)
    offset = _rotate(pos - target, up, math.radians(yaw))
    dist = float(np.linalg.norm(offset))
    right = np.cross(up, offset)
    if np.linalg.norm(right) > 1e-12:
        polar = math.acos(max(-1.0, min(1.0, float(np.dot(offset, up)) / dist)))
        lo, hi = math.radians(POLE_MARGIN_DEG), math.radians(180.0 - POLE_MARGIN_DEG)
        turn = max(lo, min(hi, polar - math.radians(pitch))) - polar
        offset = _rotate(offset, right / np.linalg.norm(right), turn)
    offset *= scale
    fwd = -offset / np.linalg.norm(offset)
    r = np.cross(fwd, up)
    r /= max(float(np.linalg.norm(r)), 1e-12)
    target = target + (r * dx + np.cross(r, fwd) * dy) * dist
    return dataclasses.replace(cam, position=tuple(float(x) for x in target + offset),
                               look_at=tuple(float(x) for x in target))  # fmt: skip


def vec3(name: str, value) -> tuple[float, float, float]:
    try:
        v = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers, not {value!r}") from None
    if len(v) != 3 or not all(math.isfinite(x) and abs(x) <= COORD_MAX for x in v):
        raise ValueError(f"{name} must be three finite numbers within ±{COORD_MAX:g}, not {value!r}")
    return v  # type: ignore[return-value]


def number(name: str, value, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{name} must be from {lo:g} to {hi:g}, not {value!r}")
    return v


def reflectance(value) -> tuple[float, float, float]:
    c = vec3("color", value)
    if not all(0.0 <= x <= 1.0 for x in c):
        raise ValueError(f"color must be three numbers from 0 to 1 (a reflectance), not {value!r}")
    return c

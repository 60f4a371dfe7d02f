"""The GIMP plug-in's upscale path, without GIMP: layer pixels (RGBA, 8 or 16 bits, as GEGL
hands them out) through pgp_wgpu and back, with the host's progress and cancel wired in.
Kept apart from the GIMP glue so that it can be tested headless (crates/pgp-py/tests)."""

from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

import pgp_wgpu

# Where the plug-in finds its model: $PGP_WGPU_MODEL, else the bundle `pgp-wgpu download
# osediff` made (the one-step model: interactive).
DEFAULT_BUNDLE = os.path.join(
    os.environ.get("PGP_WGPU_CACHE")
    or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pgp-wgpu"),
    "osediff.bundle",
)

_upscalers: dict = {}


def model_path() -> str:
    return os.environ.get("PGP_WGPU_MODEL") or DEFAULT_BUNDLE


def upscaler(bundle: str, device: str = "auto") -> pgp_wgpu.Upscaler:
    """One loaded model per (bundle, device) for the plug-in process's life."""
    key = (bundle, device)
    if key not in _upscalers:
        _upscalers[key] = pgp_wgpu.Upscaler(bundle, device=device)
    return _upscalers[key]


def upscale_layer(
    data: bytes,
    width: int,
    height: int,
    bits: int,
    scale: int,
    *,
    bundle: Optional[str] = None,
    device: str = "auto",
    seed: int = 0,
    report: Callable[[float], Optional[bool]] = lambda fraction: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> tuple[bytes, int, int]:
    """RGBA pixels (`bits` 8 or 16, native byte order) → the upscaled RGBA pixels and size.
    `report(fraction)` after each unit of work (returning False stops the run, as GIMP's
    progress update does once the user cancelled it); `cancelled()` true stops it too. A
    stopped run raises `pgp_wgpu.Cancelled`."""
    dtype = {8: np.uint8, 16: np.uint16}[bits]
    rgba = np.frombuffer(data, dtype=dtype).reshape(height, width, 4)

    def progress(done: int, total: int, unit: str) -> bool:
        keep = report(done / total if total else 0.0)
        return keep is not False and not cancelled()

    out = upscaler(bundle or model_path(), device).upscale(
        rgba, scale=scale, seed=seed, progress=progress
    )
    return out.tobytes(), out.shape[1], out.shape[0]

"""The Krita plug-in's upscale path, without Krita: a paint layer's pixel data (Krita's RGBA
documents store BGRA, 8 or 16 bits per channel) through pgp_wgpu and back. Kept apart from the
Krita glue so that it can be tested headless (crates/pgp-py/tests)."""

from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

import pgp_wgpu

_upscalers: dict = {}


def model_path() -> str:
    """$PGP_WGPU_MODEL, else the bundle `pgp-wgpu download osediff` made."""
    if os.environ.get("PGP_WGPU_MODEL"):
        return os.environ["PGP_WGPU_MODEL"]
    cache = os.environ.get("PGP_WGPU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pgp-wgpu"
    )
    return os.path.join(cache, "osediff.bundle")


def upscale_bgra(
    data: bytes,
    width: int,
    height: int,
    depth: str,
    scale: int,
    *,
    bundle: Optional[str] = None,
    device: str = "auto",
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> tuple[bytes, int, int]:
    """BGRA pixel data (`depth` "U8" or "U16", as Krita's colour depth ids) → the upscaled BGRA
    data and size. `progress(done, total)` after each unit; `cancelled()` true stops the run
    (`pgp_wgpu.Cancelled`)."""
    dtype = {"U8": np.uint8, "U16": np.uint16}[depth]
    bgra = np.frombuffer(data, dtype=dtype).reshape(height, width, 4)
    rgba = bgra[..., [2, 1, 0, 3]]
    key = (bundle or model_path(), device)
    if key not in _upscalers:
        _upscalers[key] = pgp_wgpu.Upscaler(key[0], device=device)

    def on_unit(done: int, total: int, unit: str) -> bool:
        if progress is not None:
            progress(done, total)
        return not cancelled()

    out = _upscalers[key].upscale(rgba, scale=scale, seed=seed, progress=on_unit)
    return np.ascontiguousarray(out[..., [2, 1, 0, 3]]).tobytes(), out.shape[1], out.shape[0]

"""pgp-wgpu: diffusion super-resolution on wgpu (Vulkan / Metal / DX12), without PyTorch.

    import pgp_wgpu
    up = pgp_wgpu.Upscaler("osediff.bundle")          # device="auto", precision="auto"
    out = up.upscale(image, scale=4)                  # NumPy array or PIL image in, same out

Arrays are H x W x 3 or H x W x 4, uint8 or uint16 (alpha is upscaled separately and kept;
16-bit colour comes back with the decoder's float precision). The GIL is released while the
engine works. ``progress(done, total, unit)`` is called after each finished unit of work;
returning ``False`` stops the run with :class:`Cancelled`, and Ctrl-C raises
``KeyboardInterrupt`` at the next unit. Engine errors keep the engine's messages: bad input is
``ValueError``, the rest :class:`Error`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import numpy as np

from . import _native
from ._native import Cancelled, Error, devices

__all__ = ["Upscaler", "Error", "Cancelled", "convert", "download", "devices"]

Progress = Callable[[int, int, str], Optional[bool]]
PathLike = Union[str, "os.PathLike[str]"]

_FORMATS = {
    (np.dtype(np.uint8), 3): "rgb8",
    (np.dtype(np.uint8), 4): "rgba8",
    (np.dtype(np.uint16), 3): "rgb16",
    (np.dtype(np.uint16), 4): "rgba16",
}


def _is_pil(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(image, Image.Image)


def _from_pil(image: Any) -> np.ndarray:
    # Pillow's 16-bit modes are single-channel; colour images are 8-bit.
    if image.mode in ("RGB", "RGBA"):
        return np.asarray(image)
    has_alpha = image.mode in ("LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


class Upscaler:
    """A model bundle (made by ``convert`` / ``download`` or ``pgp-wgpu convert``) loaded on
    ``device`` ("auto", "cpu" or "gpu:N" as ``devices()`` lists them) at ``precision``
    ("auto", "f16" or "f32"; the same seed and precision give the same image everywhere,
    within float rounding: README, "What a seed promises")."""

    def __init__(self, bundle: PathLike, device: str = "auto", precision: str = "auto"):
        self._native = _native.Upscaler(os.fspath(bundle), device, precision)

    @property
    def family(self) -> str:
        """"faithdiff" (FaithDiff, PGP-DiffSR) or "sd21" (OSEDiff, PiSA-SR)."""
        return self._native.family

    @property
    def one_step(self) -> bool:
        """Whether the bundle's default is one UNet call."""
        return self._native.one_step

    @property
    def device(self) -> str:
        """The adapter's name."""
        return self._native.device

    def upscale(
        self,
        image: Any,
        scale: Optional[int] = None,
        steps: Optional[int] = None,
        tile: int = 0,
        seed: int = 0,
        prompt: str = "",
        color_fix: str = "adain",
        guidance: Optional[float] = None,
        start: str = "lr",
        one_step: Optional[bool] = None,
        max_memory_mib: Optional[int] = None,
        progress: Optional[Progress] = None,
    ) -> Any:
        """Upscales ``image`` (a NumPy array or a PIL image) and returns the same kind.

        ``scale`` (default 2), ``steps`` (default 20; one-step bundles ignore it), ``tile`` in
        output pixels (0: the largest the device allows), ``seed``, ``prompt``, ``color_fix``
        ("adain", "wavelet" or "none"), ``guidance`` (with a prompt), ``start`` ("lr" or
        "noise"), ``one_step`` (None: the bundle's default), ``max_memory_mib`` (a device
        budget for automatic tiles), ``progress`` (see the module's help)."""
        pil = _is_pil(image)
        array = _from_pil(image) if pil else np.asarray(image)
        if array.ndim != 3 or (array.dtype, array.shape[2]) not in _FORMATS:
            raise ValueError(
                "image must be H x W x 3 or H x W x 4, uint8 or uint16; got shape "
                f"{array.shape} of {array.dtype}"
            )
        height, width, channels = array.shape
        fmt = _FORMATS[(array.dtype, channels)]
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        out, w, h = self._native.upscale(
            data,
            width,
            height,
            fmt,
            scale=scale,
            steps=steps,
            tile=tile,
            seed=seed,
            prompt=prompt,
            guidance=guidance,
            color_fix=color_fix,
            start=start,
            one_step=one_step,
            max_memory_mib=max_memory_mib,
            progress=progress,
        )
        result = np.frombuffer(out, dtype=array.dtype.newbyteorder("<")).reshape(h, w, channels)
        result = result.astype(array.dtype, copy=False)
        if pil:
            from PIL import Image

            return Image.fromarray(np.ascontiguousarray(result))
        return result


def convert(
    output: PathLike,
    *,
    sdxl: Optional[PathLike] = None,
    vae: Optional[PathLike] = None,
    faithdiff: Optional[PathLike] = None,
    sd21: Optional[PathLike] = None,
    osediff: Optional[PathLike] = None,
    pisa: Optional[PathLike] = None,
    arch: str = "faithdiff",
    dtype: str = "f16",
    unet_config: Optional[PathLike] = None,
    peam_config: Optional[PathLike] = None,
    one_step: bool = False,
    lora: Optional[PathLike] = None,
    lora_scale: float = 1.0,
    lora_alpha: Optional[float] = None,
) -> str:
    """Writes a model bundle at ``output`` (which must not exist), as ``pgp-wgpu convert``:
    ``sdxl=``, ``vae=`` and ``faithdiff=`` for FaithDiff / PGP-DiffSR (``arch``, ``lora``, …),
    or ``sd21=`` with ``osediff=`` or ``pisa=`` for the one-step SD2.1 models. Returns the
    bundle's path."""
    p = lambda v: None if v is None else os.fspath(v)  # noqa: E731
    if sd21 is not None:
        if any(v is not None for v in (sdxl, vae, faithdiff, lora, unet_config, peam_config)):
            raise ValueError("sd21= takes osediff= or pisa=, not the FaithDiff inputs")
        _native.convert_sd21(p(output), sd21=p(sd21), osediff=p(osediff), pisa=p(pisa), dtype=dtype)
    else:
        if sdxl is None or vae is None or faithdiff is None:
            raise ValueError("give sdxl=, vae= and faithdiff= (or sd21= with osediff= or pisa=)")
        if osediff is not None or pisa is not None:
            raise ValueError("osediff= and pisa= go with sd21=")
        _native.convert_faithdiff(
            p(output),
            sdxl=p(sdxl),
            vae=p(vae),
            faithdiff=p(faithdiff),
            arch=arch,
            dtype=dtype,
            unet_config=p(unet_config),
            peam_config=p(peam_config),
            one_step=one_step,
            lora=p(lora),
            lora_scale=lora_scale,
            lora_alpha=lora_alpha,
        )
    return os.fspath(output)


def download(model: str, output: Optional[PathLike] = None, quiet: bool = True) -> str:
    """Downloads ``model`` ("faithdiff" or "osediff") and converts it, as ``pgp-wgpu
    download``; returns the bundle's folder (default: the cache folder the CLI uses)."""
    fn = getattr(_native, "download", None)
    if fn is None:
        raise Error("this build of pgp_wgpu has no downloader")
    return os.fspath(fn(model, None if output is None else os.fspath(output), quiet))

"""The GIMP 3 and Krita examples' upscale paths, headless (neither host runs here: Debian 12
has GIMP 2.10, and Krita runs its plug-ins only inside its GUI): the modules the plug-ins call
import without their hosts and upscale the fixture, with progress and cancel wired as the hosts
wire them. The host glue files are checked to compile."""

import importlib.util
import py_compile
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pgp_wgpu

ROOT = Path(__file__).resolve().parents[3]
GIMP = ROOT / "examples/gimp/pgp-wgpu-upscale"
KRITA = ROOT / "examples/krita/pykrita"
INPUT = ROOT / "tests/pipeline/input.png"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def osediff(tmp_path_factory) -> Path:
    hub = ROOT / "tests/hub"
    out = tmp_path_factory.mktemp("plugins") / "osediff.bundle"
    return Path(pgp_wgpu.convert(out, sd21=hub / "sd21", osediff=hub / "osediff.pkl", dtype="f32"))


def rgba(bits: int) -> np.ndarray:
    a = np.asarray(Image.open(INPUT).convert("RGBA")).copy()
    a[..., 3] = 200
    return a.astype(np.uint16) * 257 if bits == 16 else a


def test_host_glue_compiles():
    py_compile.compile(str(GIMP / "pgp-wgpu-upscale.py"), doraise=True)
    py_compile.compile(str(KRITA / "pgp_wgpu_upscale/extension.py"), doraise=True)
    assert "X-KDE-Library=pgp_wgpu_upscale" in (KRITA / "pgp_wgpu_upscale.desktop").read_text()


@pytest.mark.parametrize("bits", [8, 16])
def test_gimp_pixels_path(osediff, bits):
    mod = load("pgp_wgpu_pixels", GIMP / "pgp_wgpu_pixels.py")
    src = rgba(bits)
    h, w, _ = src.shape
    fractions = []
    out, ow, oh = mod.upscale_layer(
        src.tobytes(), w, h, bits, 2, bundle=str(osediff), device="cpu", seed=7,
        report=fractions.append,
    )
    assert (ow, oh) == (2 * w, 2 * h) and fractions[-1] == 1.0
    got = np.frombuffer(out, dtype=src.dtype).reshape(oh, ow, 4)
    want = pgp_wgpu.Upscaler(osediff, device="cpu").upscale(src, scale=2, seed=7)
    np.testing.assert_array_equal(got, want)
    # GIMP's progress update returning False (the user cancelled) stops the run.
    with pytest.raises(pgp_wgpu.Cancelled):
        mod.upscale_layer(src.tobytes(), w, h, bits, 2, bundle=str(osediff), device="cpu",
                          report=lambda f: False)


def test_krita_pixels_path_is_bgra(osediff):
    sys.path.insert(0, str(KRITA))
    try:
        import pgp_wgpu_upscale  # no krita module here: the package imports without the host
        from pgp_wgpu_upscale import pixels
    finally:
        sys.path.remove(str(KRITA))
    assert pgp_wgpu_upscale.Krita is None
    src = rgba(8)
    h, w, _ = src.shape
    bgra = np.ascontiguousarray(src[..., [2, 1, 0, 3]])
    seen = []
    out, ow, oh = pixels.upscale_bgra(
        bgra.tobytes(), w, h, "U8", 2, bundle=str(osediff), device="cpu", seed=7,
        progress=lambda d, t: seen.append((d, t)),
    )
    got = np.frombuffer(out, dtype=np.uint8).reshape(oh, ow, 4)
    want = pgp_wgpu.Upscaler(osediff, device="cpu").upscale(src, scale=2, seed=7)
    np.testing.assert_array_equal(got[..., [2, 1, 0, 3]], want)
    assert seen and seen[-1][0] == seen[-1][1]
    # The dialog's Cancel (wasCanceled) stops the run.
    with pytest.raises(pgp_wgpu.Cancelled):
        pixels.upscale_bgra(bgra.tobytes(), w, h, "U8", 2, bundle=str(osediff), device="cpu",
                            cancelled=lambda: True)

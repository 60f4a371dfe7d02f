"""The Python package against the CLI on the tiny random-weight fixtures (CPU backend: exact).

Needs the `pgp-wgpu` binary of the same build: $PGP_WGPU_BIN, else target/debug/pgp-wgpu
(or $CARGO_TARGET_DIR/debug/pgp-wgpu).
"""

import os
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pgp_wgpu

ROOT = Path(__file__).resolve().parents[3]
INPUT = ROOT / "tests/pipeline/input.png"
RUN = dict(scale=2, steps=3, tile=32, seed=7)


def binary() -> Path:
    if os.environ.get("PGP_WGPU_BIN"):
        return Path(os.environ["PGP_WGPU_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "pgp-wgpu"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    return subprocess.run([str(binary()), *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny.bundle"
    hub = ROOT / "tests/hub"
    path = pgp_wgpu.convert(
        out, sdxl=hub / "sdxl", vae=hub / "vae", faithdiff=hub / "FaithDiff.bin", dtype="f32"
    )
    assert Path(path) == out and (out / "manifest.json").is_file()
    return out


@pytest.fixture(scope="session")
def upscaler(bundle) -> pgp_wgpu.Upscaler:
    return pgp_wgpu.Upscaler(bundle, device="cpu")


def cli_upscale(model: Path, tmp: Path, extra=()) -> np.ndarray:
    out = tmp / "cli.png"
    r = cli(
        "upscale", "-q", "--device", "cpu", "-i", str(INPUT), "-o", str(out), "--model",
        str(model), "-s", str(RUN["scale"]), "--steps", str(RUN["steps"]), "-t",
        str(RUN["tile"]), "--seed", str(RUN["seed"]), "--overwrite", *extra,
    )
    assert r.returncode == 0, r.stderr
    return np.asarray(Image.open(out).convert("RGB"))


def test_equals_the_cli_at_the_same_seed(upscaler, bundle, tmp_path):
    image = np.asarray(Image.open(INPUT).convert("RGB"))
    out = upscaler.upscale(image, **RUN)
    assert out.dtype == np.uint8 and out.shape == (2 * image.shape[0], 2 * image.shape[1], 3)
    assert upscaler.family == "faithdiff" and not upscaler.one_step
    np.testing.assert_array_equal(out, cli_upscale(bundle, tmp_path))
    # Another seed gives another image (the comparison above can fail).
    assert np.abs(upscaler.upscale(image, **{**RUN, "seed": 8}).astype(int) - out).max() > 0


def test_pil_in_pil_out(upscaler):
    pil = Image.open(INPUT).convert("RGB")
    out = upscaler.upscale(pil, **RUN)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert out.size == (2 * pil.width, 2 * pil.height)
    np.testing.assert_array_equal(np.asarray(out), upscaler.upscale(np.asarray(pil), **RUN))
    rgba = pil.convert("RGBA")
    out = upscaler.upscale(rgba, **RUN)
    assert out.mode == "RGBA"


def test_alpha_and_16_bits(upscaler):
    rgb = np.asarray(Image.open(INPUT).convert("RGB"))
    h, w, _ = rgb.shape
    alpha = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))[..., None]
    rgba = np.concatenate([rgb, alpha], axis=2)
    out8 = upscaler.upscale(rgba, **RUN)
    assert out8.shape == (2 * h, 2 * w, 4)
    np.testing.assert_array_equal(out8[..., :3], upscaler.upscale(rgb, **RUN))
    # The alpha is the input's, resized: a left-to-right ramp stays one.
    assert out8[:, 0, 3].mean() < 30 and out8[:, -1, 3].mean() > 225
    wide = rgb.astype(np.uint16) * 257
    out16 = upscaler.upscale(wide, **RUN)
    assert out16.dtype == np.uint16 and out16.shape == (2 * h, 2 * w, 3)
    assert np.abs(np.round(out16 / 257.0) - out8[..., :3]).max() <= 1


def test_progress_and_cancel(upscaler):
    image = np.asarray(Image.open(INPUT).convert("RGB"))
    seen = []
    upscaler.upscale(image, **RUN, progress=lambda done, total, unit: seen.append((done, total, unit)))
    assert [d for d, _, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[-1][0] == seen[-1][1] and any("step 3/3" in u for _, _, u in seen)

    calls = []

    def stop_after_three(done, total, unit):
        calls.append(done)
        return done < 3

    with pytest.raises(pgp_wgpu.Cancelled):
        upscaler.upscale(image, **RUN, progress=stop_after_three)
    assert calls == [1, 2, 3]

    def broken(done, total, unit):
        raise ZeroDivisionError("from the callback")

    with pytest.raises(ZeroDivisionError, match="from the callback"):
        upscaler.upscale(image, **RUN, progress=broken)
    # The upscaler still works after each of those.
    upscaler.upscale(image, **RUN)


def test_ctrl_c_raises_keyboard_interrupt(upscaler):
    image = np.asarray(Image.open(INPUT).convert("RGB"))
    calls = []

    def interrupt(done, total, unit):
        calls.append(done)
        if done == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        upscaler.upscale(image, **RUN, progress=interrupt)
    # Stopped at the next unit.
    assert calls[-1] <= 3


def test_the_gil_is_released(upscaler):
    image = np.asarray(Image.open(INPUT).convert("RGB"))
    worker = threading.Thread(target=lambda: upscaler.upscale(image, **RUN))
    count = 0
    worker.start()
    while worker.is_alive():
        count += 1
    worker.join()
    # With the GIL held by the engine this loop would stall for the whole run.
    assert count > 10_000, count


def test_errors_carry_the_engines_messages(upscaler, tmp_path):
    image = np.asarray(Image.open(INPUT).convert("RGB"))
    with pytest.raises(ValueError, match="scale must be 1 to 16"):
        upscaler.upscale(image, scale=0)
    with pytest.raises(ValueError, match="H x W x 3 or H x W x 4"):
        upscaler.upscale(image[..., 0])
    with pytest.raises(ValueError, match="color fix|colour fix|color_fix|adain"):
        upscaler.upscale(image, color_fix="sepia")
    with pytest.raises(pgp_wgpu.Error, match="not a model bundle"):
        pgp_wgpu.Upscaler(tmp_path / "nothing", device="cpu")
    with pytest.raises(ValueError, match="unknown device"):
        pgp_wgpu.Upscaler(tmp_path, device="tpu")
    with pytest.raises(pgp_wgpu.Error, match="exists"):
        hub = ROOT / "tests/hub"
        pgp_wgpu.convert(tmp_path, sdxl=hub / "sdxl", vae=hub / "vae", faithdiff=hub / "FaithDiff.bin")


def test_osediff_equals_the_cli(tmp_path):
    hub = ROOT / "tests/hub"
    model = pgp_wgpu.convert(
        tmp_path / "osediff.bundle", sd21=hub / "sd21", osediff=hub / "osediff.pkl", dtype="f32"
    )
    up = pgp_wgpu.Upscaler(model, device="cpu")
    assert up.family == "sd21" and up.one_step
    image = np.asarray(Image.open(INPUT).convert("RGB"))
    out = up.upscale(image, **RUN)
    np.testing.assert_array_equal(out, cli_upscale(Path(model), tmp_path))


def test_devices_equal_the_clis_list():
    listed = cli("devices").stdout.splitlines()
    found = pgp_wgpu.devices()
    assert len(found) == len([line for line in listed if line[:1].isdigit()])
    for (index, name, backend, kind, shader_f16, software), line in zip(found, listed):
        assert line.startswith(f"{index}: {name} ({backend}, {kind}, "), line
        assert (", shader-f16" in line) == shader_f16, line
        assert ("; software" in line) == software, line
        if "llvmpipe" in name:  # lavapipe, this machine's adapter: a CPU renderer
            assert software

#!/usr/bin/env python3
"""One UNet call in PyTorch and in pgp-wgpu's CPU backend, one after the other on the same
machine, config, shapes and thread count; prints the time ratio (target: pgp-wgpu ≤ 1.5×).

    python3 tools/side_by_side.py --python /tmp/torch/bin/python --threads 2

For each architecture it asks pgp-wgpu for the UNet's config.json (`bench unet --print-config`),
runs tools/torch_bench.py on it with `--python` (an interpreter with torch + diffusers; this
script installs nothing), then `pgp-wgpu bench unet --plain --device cpu --precision f32` with
RAYON_NUM_THREADS set to the same count. `--with-fusion` adds pgp-wgpu's full FaithDiff /
PGP-DiffSR UNet (fusion and PEAM, which PyTorch's UNet2DConditionModel lacks) as a last column.
Results go to docs/PERFORMANCE.md by hand, with the machine.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd, env=None):
    """Runs `cmd`, echoes its stderr, returns its last stdout line parsed as JSON."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"side_by_side: `{shlex.join(cmd)}` exited with {p.returncode}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"side_by_side: `{shlex.join(cmd)}` printed no JSON line")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="a Python with torch + diffusers")
    ap.add_argument(
        "--bin",
        default="cargo run -q --locked -p pgp-wgpu --",
        help="how to run pgp-wgpu (default: cargo run, the test build's profile)",
    )
    ap.add_argument("--archs", default="faithdiff,pgp-coarse,pgp")
    ap.add_argument("--tile", type=int, default=128, help="pixels; the latent is tile / 8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2, help="timed calls after one warm-up")
    ap.add_argument("--with-fusion", action="store_true")
    args = ap.parse_args()
    pgp = shlex.split(args.bin)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))

    rows = []
    for arch in args.archs.split(","):
        cfg = subprocess.run(
            pgp + ["bench", "unet", "--arch", arch, "--print-config"],
            capture_output=True, text=True, check=True,
        ).stdout
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write(cfg)
        try:
            torch = run_json(
                [args.python, os.path.join(HERE, "torch_bench.py"), "--config", f.name,
                 "--tile", str(args.tile), "--threads", str(args.threads),
                 "--runs", str(args.runs), "--label", arch]
            )
        finally:
            os.unlink(f.name)
        common = ["bench", "unet", "--arch", arch, "--size", "full", "-t", str(args.tile),
                  "--device", "cpu", "--precision", "f32", "--runs", str(args.runs), "--json"]
        ours = run_json(pgp + common + ["--plain"], env=env)
        fused = run_json(pgp + common, env=env) if args.with_fusion else None
        if torch["params"] != ours["params"]:
            print(f"warning: {arch}: PyTorch's UNet has {torch['params']} parameters, "
                  f"pgp-wgpu's {ours['params']}", file=sys.stderr)
        rows.append((arch, torch, ours, fused))
        print(json.dumps({"arch": arch, "torch": torch, "pgp_wgpu": ours, "pgp_wgpu_fused": fused}),
              file=sys.stderr)

    print(f"\nUNet call, latent {args.tile // 8}², batch 1, f32, {args.threads} threads, "
          f"mean of {args.runs} after a warm-up")
    head = f"{'arch':<11} {'params':>13} {'PyTorch':>9} {'pgp-wgpu':>9} {'ratio':>6}"
    print(head + ("  with fusion" if args.with_fusion else ""))
    for arch, torch, ours, fused in rows:
        t, o = torch["mean_call_s"], ours["mean_call_s"]
        line = f"{arch:<11} {ours['params']:>13,} {t:>8.3f}s {o:>8.3f}s {o / t:>5.2f}×"
        if fused:
            line += f"  {fused['mean_call_s']:.3f}s ({fused['mean_call_s'] / t:.2f}×)"
        print(line)
    print(f"PyTorch {rows[0][1]['torch']}; target: ratio ≤ 1.50×" if rows else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())

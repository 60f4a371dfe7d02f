#!/usr/bin/env python3
"""One diffusers UNet2DConditionModel call in PyTorch on the CPU: the other half of
tools/side_by_side.py, which runs `pgp-wgpu bench unet --plain` on the same config and shapes.

    python3 tools/torch_bench.py --config unet_config.json --tile 128 --threads 2 --runs 2

The config is a diffusers UNet config.json (`pgp-wgpu bench unet --arch A --print-config`
prints the one pgp-wgpu builds). Weights are diffusers' random initialisation; the inputs are
the ones `pgp-wgpu bench unet` makes: batch 1, a 77-token context, SDXL's pooled text embedding
and time ids, timestep 951. Prints one JSON line.

PyTorch is a tool here, not a dependency of pgp-wgpu: this script installs nothing. Get it with
    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch diffusers
(add `--index-url https://download.pytorch.org/whl/cpu` to torch's install for the smaller
CPU-only wheel) and run this script with that Python.
"""

import argparse
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="diffusers UNet config.json")
    ap.add_argument("--tile", type=int, default=128, help="tile in pixels (latent = tile / 8)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--runs", type=int, default=2, help="timed calls after one warm-up call")
    ap.add_argument("--label", default="", help="echoed in the JSON line")
    args = ap.parse_args()
    if args.tile <= 0 or args.tile % 8 or args.runs <= 0:
        ap.error("--tile must be a positive multiple of 8 and --runs positive")
    try:
        import torch
        from diffusers import UNet2DConditionModel
    except ImportError as e:
        print(
            f"torch_bench: {e}. PyTorch and diffusers are not installed for {sys.executable}; "
            "get them with: python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch "
            "diffusers, then run this script with /tmp/torch/bin/python",
            file=sys.stderr,
        )
        return 2

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with open(args.config) as f:
        cfg = json.load(f)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_config(cfg).eval().to(torch.float32)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in unet.parameters())

    latent = args.tile // 8
    ctx = cfg["cross_attention_dim"]
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, cfg["in_channels"], latent, latent, generator=g)
    context = torch.randn(1, 77, ctx, generator=g)
    added = {
        "text_embeds": torch.randn(1, pooled, generator=g),
        "time_ids": torch.tensor([[args.tile, args.tile, 0.0, 0.0, 1024.0, 1024.0]]),
    }
    timestep = torch.tensor([951.0])

    times = []
    with torch.inference_mode():
        for _ in range(args.runs + 1):
            t = time.perf_counter()
            unet(sample, timestep, encoder_hidden_states=context, added_cond_kwargs=added)
            times.append(time.perf_counter() - t)
    first = times.pop(0)
    print(
        json.dumps(
            {
                "bench": "torch_unet",
                "label": args.label,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "tile": args.tile,
                "latent": latent,
                "params": params,
                "build_s": build_s,
                "first_call_s": first,
                "mean_call_s": sum(times) / len(times),
                "runs": args.runs,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

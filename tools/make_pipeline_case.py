"""End-to-end reference of the upscaling pipeline (shared/spec/pipeline.md) on the tiny hub
fixture (tests/hub, random weights: a test fixture, not a model), with explicit noise so that
the Rust pipeline can be compared stage by stage.

Usage: python make_pipeline_case.py HUB_DIR OUT_DIR
Writes OUT_DIR/case.json (settings) and OUT_DIR/tensors.safetensors: `image` (u8 H×W×3 input),
`latent_noise`, `vae_noise`, and the stages `lq_features`, `start_latent`, `latent_step_1`,
`latent_final`, `decoded` ([-1, 1], padded), `image_raw` and `image_adain` (u8 outputs), and
for the one-step S1 mode on the same weights `s1_latent` (x0) and `s1_image_adain`.
Needs torch, diffusers, Pillow; CI never runs it.
"""
import json, os, sys

import numpy as np
import torch
import torch.nn as nn
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from make_cases import CondEmb, RAB  # noqa: E402
from make_image_cases import adain  # noqa: E402

torch.set_grad_enabled(False)
hub, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
settings = dict(scale=2, steps=3, tile=32, start="lr", color_fix="adain", guidance=5.0, prompt="")

ucfg = json.load(open(os.path.join(hub, "sdxl/unet/config.json")))
unet = UNet2DConditionModel.from_config(ucfg).eval()
sd = torch.load(os.path.join(hub, "FaithDiff.bin"), weights_only=True)
c0 = ucfg["block_out_channels"][0]
vcfg = json.load(open(os.path.join(hub, "vae/config.json")))
lq_ch = vcfg["block_out_channels"][-1]
extras = nn.Module()
extras.condition_embedding = CondEmb(lq_ch, c0, 32 if lq_ch % 32 == 0 else 8)
extras.information_transformer_layes = nn.Sequential(RAB(2 * c0, 8), RAB(2 * c0, 8))
extras.spatial_ch_projs = nn.Linear(2 * c0, c0)
unet.load_state_dict({k: v for k, v in sd.items() if k in unet.state_dict()})
extras.load_state_dict({k: v for k, v in sd.items() if k in extras.state_dict()})
denoise = AutoencoderKL.from_config(vcfg).eval().encoder
denoise.load_state_dict({k[len("denoise_encoder."):]: v for k, v in sd.items() if k.startswith("denoise_encoder.")},
                        strict=False)
vae = AutoencoderKL.from_config(vcfg).eval()
vae.load_state_dict(load_file(os.path.join(hub, "vae/diffusion_pytorch_model.safetensors")))
sched = EulerDiscreteScheduler.from_config(json.load(open(os.path.join(hub, "sdxl/scheduler/scheduler_config.json"))))
empty = load_file(os.path.join(hub, "empty_prompt.safetensors"))

rng = np.random.default_rng(4)
yy, xx = np.mgrid[0:16, 0:24]
image = np.stack([xx * 10, yy * 15, (xx * yy) % 256], -1).astype(np.uint8) // 2 + rng.integers(0, 128, (16, 24, 3)).astype(np.uint8)
s = settings["scale"]
up = Image.fromarray(image).resize((24 * s, 16 * s), Image.LANCZOS)
up_np = np.asarray(up)
H, W = (-(-up_np.shape[0] // 8)) * 8, (-(-up_np.shape[1] // 8)) * 8
padded = np.pad(up_np, ((0, H - up_np.shape[0]), (0, W - up_np.shape[1]), (0, 0)), mode="edge")
x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 127.5 - 1

h = denoise.conv_in(x)
for blk in denoise.down_blocks:
    h = blk(h)
lq = denoise.mid_block(h)

g = torch.Generator().manual_seed(9)
lh, lw = H // 8, W // 8
latent_noise = torch.randn(1, 4, lh, lw, generator=g)
vae_noise = torch.randn(1, 4, lh, lw, generator=g)
sched.set_timesteps(settings["steps"])
ac = sched.alphas_cumprod
moments = vae.quant_conv(vae.encoder(x))
mean, logvar = moments.chunk(2, 1)
z = vae.config.scaling_factor * (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * vae_noise)
init = float(sched.init_noise_sigma)
latents = ac[999].sqrt() * z + (1 - ac[999]).sqrt() * init * latent_noise
start = latents.clone()


def gaussian(th, tw):
    var = 0.01
    xs = [np.exp(-(x - (tw - 1) / 2) ** 2 / (tw * tw) / (2 * var)) / np.sqrt(2 * np.pi * var) for x in range(tw)]
    ys = [np.exp(-(y - th / 2) ** 2 / (th * th) / (2 * var)) / np.sqrt(2 * np.pi * var) for y in range(th)]
    return torch.tensor(np.outer(ys, xs), dtype=torch.float32)


def starts(n, tile, stride):
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, stride)) + [n - tile]
    return sorted(set(s))


tile = settings["tile"] // 8
stride = tile // 2
prompt, pooled = empty["prompt_embeds"], empty["pooled_prompt_embeds"]
def blended_eps(latents, in_scale, t):
    acc = torch.zeros_like(latents)
    wsum = torch.zeros(1, 1, lh, lw)
    for top in starts(lh, tile, stride):
        for left in starts(lw, tile, stride):
            th, tw = min(tile, lh), min(tile, lw)
            xt = latents[:, :, top:top + th, left:left + tw] * in_scale
            lq_t = lq[:, :, top:top + th, left:left + tw]

            def hook(mod, inp, o):
                cond = extras.condition_embedding(lq_t)
                b, ch, hh, ww = cond.shape
                feat = torch.cat([o, cond], 1).view(b, 2 * ch, hh * ww).transpose(1, 2)
                feat = extras.information_transformer_layes(feat)
                return o + extras.spatial_ch_projs(feat).transpose(1, 2).reshape(b, ch, hh, ww)

            hd = unet.conv_in.register_forward_hook(hook)
            time_ids = torch.tensor([[H, W, top, left, settings["tile"], settings["tile"]]], dtype=torch.float32)
            eps = unet(xt, t, encoder_hidden_states=prompt,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
            hd.remove()
            w = gaussian(th, tw)[None, None]
            acc[:, :, top:top + th, left:left + tw] += w * eps
            wsum[:, :, top:top + th, left:left + tw] += w
    return acc / wsum


step1 = None
for i, t in enumerate(sched.timesteps):
    sigma, sigma_next = sched.sigmas[i], sched.sigmas[i + 1]
    latents = latents + (sigma_next - sigma) * blended_eps(latents, 1 / (sigma ** 2 + 1) ** 0.5, t)
    if step1 is None:
        step1 = latents.clone()

# The one-step S1 recipe (pgp-model.md §4) on the same weights: one call at t = 999 on z.
s1 = (z - (1 - ac[999]).sqrt() * blended_eps(z, 1.0, torch.tensor(999.0))) / ac[999].sqrt()


def finish(latents):
    decoded = vae.decode(latents / vae.config.scaling_factor).sample
    raw = ((decoded.clamp(-1, 1) / 2 + 0.5) * 255).round().to(torch.uint8)[0].permute(1, 2, 0)
    raw = raw[: up_np.shape[0], : up_np.shape[1]]
    target = raw.permute(2, 0, 1)[None].float() / 255
    source = torch.from_numpy(up_np.copy()).permute(2, 0, 1)[None].float() / 255
    fixed = adain(target, source).clamp(0, 1).mul(255).byte()[0].permute(1, 2, 0)
    return decoded, raw, fixed


_, _, s1_fixed = finish(s1)
decoded, raw, fixed = finish(latents)

Image.fromarray(image).save(os.path.join(out, "input.png"))
json.dump({"settings": settings, "tolerance": {"max_rel_l2": 1e-4}}, open(os.path.join(out, "case.json"), "w"), indent=1)
save_file({"image": torch.from_numpy(image), "latent_noise": latent_noise, "vae_noise": vae_noise,
           "lq_features": lq.contiguous(), "start_latent": start.contiguous(), "latent_step_1": step1.contiguous(),
           "latent_final": latents.contiguous(), "decoded": decoded.contiguous(), "image_raw": raw.contiguous(),
           "image_adain": fixed.contiguous(), "s1_latent": s1.contiguous(),
           "s1_image_adain": s1_fixed.contiguous()}, os.path.join(out, "tensors.safetensors"))
print("wrote", out, "latent", (lh, lw), "tiles", len(starts(lh, tile, stride)) * len(starts(lw, tile, stride)))

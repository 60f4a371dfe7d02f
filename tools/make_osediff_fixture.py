"""A tiny stand-in for OSEDiff's downloads and the reference outputs of its own forward (a test
fixture, not a model): an SD2.1-base-shaped diffusers folder (unet/, vae/, text_encoder/,
tokenizer/, scheduler/ with SD2.1-base's PNDMScheduler config) and an `osediff.pkl` in the layout
OSEDiff's `save_model` writes (a torch.save dict: lists of adapted module names, `rank_unet`,
`rank_vae`, `state_dict_unet` with `conv_in.base_layer.*` and PEFT keys
`….lora_A.default_encoder.weight`, `state_dict_vae`), all random, LoRA B matrices included (PEFT's
Gaussian init leaves them zero, which would make every LoRA test vacuous).

The references follow OSEDiff's `test_osediff.py` + `OSEDiff_test.forward` in fp32: the input
resized ×4 by Pillow's BICUBIC, then LANCZOS to a multiple of 8, `ToTensor()*2-1`, the VAE posterior
sample with injected noise (`mean + std·noise`) × scaling_factor, one UNet call at t = 999 with the
PEFT adapters unmerged (`default_encoder`, `default_decoder`, `default_others` active), the DDPM x0
at t = 999 (without its 1e-10·randn), decode, clamp, `ToPILImage` (`mul(255).byte()`: truncation),
then AdaIN / wavelet against the resized input (StableSR's formulas), clamp, truncation again.
OSEDiff's pre-resize of inputs under 128 px and its RAM tagger are left out (pgp-wgpu does not
apply them; the prompt is the user's). The merged weights PEFT's `merge_and_unload()` gives are
stored too.

Usage: python make_osediff_fixture.py ROOT   (writes ROOT/tests/hub/sd21, ROOT/tests/hub/osediff.pkl,
ROOT/tests/osediff/)
Needs torch, diffusers, transformers, peft, safetensors, Pillow; CI never runs it.
"""
import json, os, sys

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, os.path.dirname(__file__))
from make_image_cases import adain, wavelet  # StableSR's colour fixes, as OSEDiff ships them
from lora_targets import unet_targets, vae_targets

torch.set_grad_enabled(False)
root = sys.argv[1]
hub = os.path.join(root, "tests", "hub", "sd21")
ref = os.path.join(root, "tests", "osediff")
g = torch.Generator().manual_seed(1999)


def randomize(module, scale=0.2):
    for name, p in module.named_parameters():
        if name.endswith("weight") and p.dim() == 1:
            p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)
        else:
            p.copy_(torch.randn(p.shape, generator=g) * scale / max(1.0, (p[0].numel() ** 0.5) / 4))


def save(folder, cfg, sd, name):
    os.makedirs(folder, exist_ok=True)
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"), indent=1, default=list)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(folder, name))


# --- the SD2.1-base-shaped folder --------------------------------------------------------------
tcfg = CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                      bos_token_id=0, eos_token_id=2, pad_token_id=1)
text = CLIPTextModel(tcfg).eval()
randomize(text, 0.3)
save(os.path.join(hub, "text_encoder"), tcfg.to_dict(), text.state_dict(), "model.safetensors")
os.makedirs(os.path.join(hub, "tokenizer"), exist_ok=True)
json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
           "unk_token": "<|endoftext|>"}, open(os.path.join(hub, "tokenizer", "special_tokens_map.json"), "w"))
os.makedirs(os.path.join(hub, "scheduler"), exist_ok=True)
json.dump({"_class_name": "PNDMScheduler", "_diffusers_version": "0.10.0.dev0", "beta_end": 0.012,
           "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
           "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
           "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None},
          open(os.path.join(hub, "scheduler", "scheduler_config.json"), "w"), indent=1)
ucfg = dict(sample_size=16, in_channels=4, out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=[16, 32, 32], layers_per_block=2, attention_head_dim=[2, 4, 4],
            cross_attention_dim=16, use_linear_projection=True, norm_num_groups=8, upcast_attention=False)
unet = UNet2DConditionModel(**ucfg).eval()
randomize(unet)
save(os.path.join(hub, "unet"), dict(unet.config), unet.state_dict(), "diffusion_pytorch_model.safetensors")
vcfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[16, 32, 32, 32], layers_per_block=1,
            latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
vae = AutoencoderKL(**vcfg).eval()
randomize(vae, 0.3)
save(os.path.join(hub, "vae"), dict(vae.config), vae.state_dict(), "diffusion_pytorch_model.safetensors")
json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.10.0.dev0"},
          open(os.path.join(hub, "model_index.json"), "w"))

# --- OSEDiff's adapters: its target selection (lora_targets.py), its adapter names, PEFT's
# default alpha (8) -------------------------------------------------------------------------------
rank = 4
enc, dec, oth = unet_targets(unet)
vae_mods = vae_targets(vae)
names = ["default_encoder", "default_decoder", "default_others"]
for name, mods in zip(names, [enc, dec, oth]):
    unet.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=mods), adapter_name=name)
unet.set_adapter(names)
vae.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=vae_mods),
                adapter_name="default_encoder")
vae.set_adapter(["default_encoder"])
# Trained values: every LoRA matrix random (B too), and conv_in's base trained as OSEDiff trains it.
for m in (unet, vae):
    for n, p in m.named_parameters():
        if "lora_" in n:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
for n in ["conv_in.base_layer.weight", "conv_in.base_layer.bias"]:
    p = dict(unet.named_parameters())[n]
    p.copy_(p + torch.randn(p.shape, generator=g) * 0.05)
pkl = {
    "vae_lora_encoder_modules": vae_mods,
    "unet_lora_encoder_modules": enc,
    "unet_lora_decoder_modules": dec,
    "unet_lora_others_modules": oth,
    "rank_unet": rank,
    "rank_vae": rank,
    "state_dict_unet": {k: v for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
    "state_dict_vae": {k: v for k, v in vae.state_dict().items() if "lora" in k},
}
torch.save(pkl, os.path.join(root, "tests", "hub", "osediff.pkl"))


# --- OSEDiff's forward, fp32, adapters unmerged ------------------------------------------------
def tokenize_empty():
    return torch.tensor([[49406, 49407] + [0] * 75])  # SD2's tokenizer pads with `!` (id 0)


def to_u8(x01):  # torchvision's ToPILImage on a float tensor: mul(255).byte(), truncation
    return (x01 * 255).to(torch.uint8)


sched = DDPMScheduler.from_pretrained(hub, subfolder="scheduler")
a = sched.alphas_cumprod[999]
os.makedirs(ref, exist_ok=True)
tensors = {}
for case, size in [("even", (24, 16)), ("odd", (13, 11))]:
    src = Image.open(os.path.join(root, "tests", "pipeline", "input.png")).convert("RGB")
    if case == "odd":
        src = src.crop((3, 2, 3 + size[0], 2 + size[1]))
        src.save(os.path.join(ref, "input_odd.png"))
    w, h = src.size
    img = src.resize((w * 4, h * 4))  # Pillow's default for RGB: BICUBIC
    img = img.resize((img.size[0] - img.size[0] % 8, img.size[1] - img.size[1] % 8), Image.LANCZOS)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    lh, lw = x.shape[2] // 8, x.shape[3] // 8
    noise = torch.randn(1, 4, lh, lw, generator=g)
    dist = vae.encode(x).latent_dist
    z = (dist.mean + dist.std * noise) * vae.config.scaling_factor
    cond = text(tokenize_empty())[0]
    eps = unet(z, torch.tensor([999]).long(), encoder_hidden_states=cond).sample
    x0 = (z - (1 - a) ** 0.5 * eps) / a ** 0.5
    decoded = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
    raw = to_u8(decoded * 0.5 + 0.5)
    source = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255
    outs = {"none": raw}
    for fix, f in [("adain", adain), ("wavelet", wavelet)]:
        outs[fix] = to_u8(f(raw.float() / 255, source).clamp(0, 1))
    for fix, o in outs.items():
        Image.fromarray(o[0].permute(1, 2, 0).numpy()).save(os.path.join(ref, f"out_{case}_{fix}.png"))
    save_file({"vae_noise": noise.contiguous()}, os.path.join(ref, f"noise_{case}.safetensors"))
    tensors.update({f"{case}.vae_noise": noise, f"{case}.start_latent": z, f"{case}.eps": eps,
                    f"{case}.latent_final": x0, f"{case}.decoded": decoded})
    tensors[f"{case}.prompt_embeds"] = cond
save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ref, "stages.safetensors"))


# OSEDiff's latent tiling (its `forward`'s tiled branch), at a tile of 4 overlapping by 2 so the
# tiny even case (an 8 × 12 latent) is tiled: tiles of min(tile, h, w), offsets i·(tile − overlap),
# the last flush with the edge, `for row (x) … for col (y)`, f64 Gaussian weights (var 0.01, x
# centred at (W − 1)/2, y at H/2), the noise prediction summed and divided by the weights' sum.
def gaussian(tw, th):
    var = 0.01
    xs = [np.exp(-(x - (tw - 1) / 2) ** 2 / (tw * tw) / (2 * var)) / np.sqrt(2 * np.pi * var) for x in range(tw)]
    ys = [np.exp(-(y - th / 2) ** 2 / (th * th) / (2 * var)) / np.sqrt(2 * np.pi * var) for y in range(th)]
    return torch.tensor(np.outer(ys, xs))


def tiled_eps(z, cond, tile, overlap):
    _, _, h, w = z.shape
    tile = min(tile, min(h, w))
    weights = gaussian(tile, tile)
    def count(n):
        k, cur = 0, 0
        while cur < n:
            cur = max(k * tile - overlap * k, 0) + tile
            k += 1
        return k
    rows, cols = count(w), count(h)
    pred = torch.zeros_like(z)
    contributors = torch.zeros_like(z)
    for row in range(rows):
        for col in range(cols):
            ofs_x = max(row * tile - overlap * row, 0)
            ofs_y = max(col * tile - overlap * col, 0)
            if row == rows - 1:
                ofs_x = w - tile
            if col == cols - 1:
                ofs_y = h - tile
            part = z[:, :, ofs_y:ofs_y + tile, ofs_x:ofs_x + tile]
            e = unet_unmerged(part, torch.tensor([999]).long(), encoder_hidden_states=cond).sample
            pred[:, :, ofs_y:ofs_y + tile, ofs_x:ofs_x + tile] += e * weights
            contributors[:, :, ofs_y:ofs_y + tile, ofs_x:ofs_x + tile] += weights
    return pred / contributors


unet_unmerged = unet  # still unmerged here
z = tensors["even.start_latent"]
eps = tiled_eps(z, tensors["even.prompt_embeds"], 4, 2)
x0 = (z - (1 - a) ** 0.5 * eps) / a ** 0.5
decoded = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
Image.fromarray(to_u8(decoded * 0.5 + 0.5)[0].permute(1, 2, 0).numpy()).save(
    os.path.join(ref, "out_even_tiled_none.png"))

# What PEFT's merge gives (the converter merges the same way): a few weights of each kind.
unet.merge_and_unload() if hasattr(unet, "merge_and_unload") else None
from peft.tuners.tuners_utils import BaseTunerLayer

merged = {}
for model, prefix in [(unet, "unet."), (vae, "vae.")]:
    for n, m in model.named_modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
    for k, v in model.state_dict().items():
        if "lora" in k:
            continue
        k = k.replace(".base_layer", "")
        if any(s in k for s in ["conv_in.weight", "attn1.to_q.weight", "ff.net.2.weight", "quant_conv.weight",
                                "encoder.down_blocks.0.resnets.0.conv1.weight", "mid_block.attentions.0.to_k.weight",
                                "conv_out.weight", "up_blocks.1.resnets.0.conv_shortcut.weight"]):
            merged[prefix + k] = v
save_file({k: v.contiguous() for k, v in merged.items()}, os.path.join(ref, "merged.safetensors"))
print("wrote", hub, ref, sorted(merged))

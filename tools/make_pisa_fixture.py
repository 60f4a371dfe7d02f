"""A tiny stand-in for PiSA-SR's `pisa_sr.pkl` and the reference outputs of its default mode (a
test fixture, not a model), on the tiny SD2.1-base folder that make_osediff_fixture.py writes.

The pkl has PiSA-SR's layout (`PiSASR.save_model`): a torch.save dict with the six lists
`unet_lora_{encoder,decoder,others}_modules_{pix,sem}`, `lora_rank_unet_pix`,
`lora_rank_unet_sem` and `state_dict_unet` holding the PEFT keys of the adapters
`default_{encoder,decoder,others}_{pix,sem}` — every LoRA matrix random, B included.

The reference follows `test_pisasr.py` + `PiSASR_eval` in its default mode (`--default`), fp32:
the input resized ×4 by Pillow's BICUBIC, LANCZOS to a multiple of 8, `ToTensor()·2 − 1`, the
VAE posterior sample (no VAE LoRA) with injected noise × scaling_factor, one UNet call at t = 1
with the empty prompt's `last_hidden_state`, the pixel and semantic adapters both merged at
weight 1 (PEFT's merge), `x0 = z − ε̂`, decode, clamp, `·0.5 + 0.5`, clip, `ToPILImage`
(truncation), then AdaIN / wavelet against the resized input. PiSA-SR's pre-resize of inputs under
128 px is left out (pgp-wgpu does not apply it).

Usage: python make_pisa_fixture.py ROOT   (reads ROOT/tests/hub/sd21; writes
ROOT/tests/hub/pisa_sr.pkl and ROOT/tests/pisa/)
Needs torch, diffusers, transformers, peft, safetensors, Pillow; CI never runs it.
"""
import os, sys

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextModel

sys.path.insert(0, os.path.dirname(__file__))
from make_image_cases import adain, wavelet
from lora_targets import unet_targets

torch.set_grad_enabled(False)
root = sys.argv[1]
hub = os.path.join(root, "tests", "hub", "sd21")
ref = os.path.join(root, "tests", "pisa")
g = torch.Generator().manual_seed(2024)

unet = UNet2DConditionModel.from_pretrained(hub, subfolder="unet").eval()
vae = AutoencoderKL.from_pretrained(hub, subfolder="vae").eval()
text = CLIPTextModel.from_pretrained(hub, subfolder="text_encoder").eval()

rank = {"pix": 4, "sem": 2}
enc, dec, oth = unet_targets(unet)
pkl = {}
for group in ["pix", "sem"]:
    for part, mods in zip(["encoder", "decoder", "others"], [enc, dec, oth]):
        name = f"default_{part}_{group}"
        unet.add_adapter(LoraConfig(r=rank[group], init_lora_weights="gaussian", target_modules=mods),
                         adapter_name=name)
        pkl[f"unet_lora_{part}_modules_{group}"] = mods
    pkl[f"lora_rank_unet_{group}"] = rank[group]
unet.set_adapter([f"default_{p}_{g_}" for g_ in ["pix", "sem"] for p in ["encoder", "decoder", "others"]])
for n, p in unet.named_parameters():
    if "lora_" in n:
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
pkl["state_dict_unet"] = {k: v for k, v in unet.state_dict().items() if "lora" in k}
torch.save(pkl, os.path.join(root, "tests", "hub", "pisa_sr.pkl"))
# The default mode: W0 + Δpix + Δsem, merged.
for m in unet.modules():
    if isinstance(m, BaseTunerLayer):
        m.merge()

os.makedirs(ref, exist_ok=True)
src = Image.open(os.path.join(root, "tests", "pipeline", "input.png")).convert("RGB")
w, h = src.size
img = src.resize((w * 4, h * 4))
img = img.resize((img.size[0] - img.size[0] % 8, img.size[1] - img.size[1] % 8), Image.LANCZOS)
x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1
noise = torch.randn(1, 4, x.shape[2] // 8, x.shape[3] // 8, generator=g)
dist = vae.encode(x).latent_dist
z = (dist.mean + dist.std * noise) * vae.config.scaling_factor
cond = text(torch.tensor([[49406, 49407] + [0] * 75]))[0]
eps = unet(z, torch.tensor([1]).long(), encoder_hidden_states=cond).sample
x0 = z - eps
decoded = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
raw = ((decoded * 0.5 + 0.5).clip(0, 1) * 255).to(torch.uint8)
source = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255
outs = {"none": raw}
for fix, f in [("adain", adain), ("wavelet", wavelet)]:
    outs[fix] = (f(raw.float() / 255, source).clamp(0, 1) * 255).to(torch.uint8)
for fix, o in outs.items():
    Image.fromarray(o[0].permute(1, 2, 0).numpy()).save(os.path.join(ref, f"out_{fix}.png"))
save_file({"vae_noise": noise.contiguous()}, os.path.join(ref, "noise.safetensors"))
print("wrote", ref)

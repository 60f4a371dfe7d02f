"""A tiny stand-in for the files users download, in their real layouts (a test fixture, not a
model): an SDXL diffusers folder (RealVisXL_V4.0 layout, f16 variants), a VAE folder
(sdxl-vae-fp16-fix layout) and a `FaithDiff.bin` written by torch.save, all with random
weights and the real key names, plus the empty prompt's embeddings computed by transformers.

Usage: python make_hub_fixture.py OUT_DIR
Needs torch, diffusers, transformers, safetensors; CI never runs it.
"""
import json, os, sys

import torch
import torch.nn as nn
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

sys.path.insert(0, os.path.dirname(__file__))
torch.set_grad_enabled(False)
out = sys.argv[1]
g = torch.Generator().manual_seed(21)


def randomize(module, scale=0.2):
    for name, p in module.named_parameters():
        if name.endswith("weight") and p.dim() == 1:
            p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)
        else:
            p.copy_(torch.randn(p.shape, generator=g) * scale / max(1.0, (p[0].numel() ** 0.5) / 4))


def save_component(folder, cfg, sd, name, fp16=True):
    os.makedirs(folder, exist_ok=True)
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"), indent=1)
    sd = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    save_file(sd, os.path.join(folder, name))


sdxl = os.path.join(out, "sdxl")
# text encoders: CLIP-L (quick_gelu) and bigG-like (gelu, projection), the real vocabulary size
texts = []
for sub, act, cls, hidden, proj in [("text_encoder", "quick_gelu", CLIPTextModel, 16, 16),
                                    ("text_encoder_2", "gelu", CLIPTextModelWithProjection, 16, 16)]:
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act=act, projection_dim=proj,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1)
    m = cls(cfg).eval()
    randomize(m, 0.3)
    sd = m.state_dict()
    if not any(k.startswith("text_model.") for k in sd):  # diffusers folders store the prefix
        sd = {("text_model." + k if not k.startswith("text_projection") else k): v for k, v in sd.items()}
    save_component(os.path.join(sdxl, sub), cfg.to_dict(), sd, "model.fp16.safetensors")
    m.load_state_dict({k: v.half().float() for k, v in m.state_dict().items()})  # what was saved
    texts.append(m)
for sub, pad in [("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")]:
    os.makedirs(os.path.join(sdxl, sub), exist_ok=True)
    json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
               "unk_token": "<|endoftext|>"}, open(os.path.join(sdxl, sub, "special_tokens_map.json"), "w"))
os.makedirs(os.path.join(sdxl, "scheduler"), exist_ok=True)
json.dump({"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
           "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
           "timestep_spacing": "leading", "steps_offset": 1, "interpolation_type": "linear",
           "use_karras_sigmas": False}, open(os.path.join(sdxl, "scheduler", "scheduler_config.json"), "w"))

ucfg = dict(sample_size=16, in_channels=4, out_channels=4,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            block_out_channels=[16, 32, 64], layers_per_block=2, transformer_layers_per_block=[1, 2, 2],
            attention_head_dim=[1, 2, 4], cross_attention_dim=32, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16,
            use_linear_projection=True, norm_num_groups=8)
base = UNet2DConditionModel(**ucfg).eval()
randomize(base)
save_component(os.path.join(sdxl, "unet"), dict(base.config), base.state_dict(),
               "diffusion_pytorch_model.fp16.safetensors")

vcfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[16, 32, 32, 32], layers_per_block=1,
            latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.13025)
vae = AutoencoderKL(**vcfg).eval()
randomize(vae, 0.3)
save_component(os.path.join(out, "vae"), dict(vae.config), vae.state_dict(), "diffusion_pytorch_model.safetensors",
               fp16=False)

# FaithDiff.bin: the fine-tuned UNet (no prefix) + denoise_encoder + fusion extras, f32
from make_cases import CondEmb, RAB  # the same modules the conformance cases use

def fusion_extras():
    """FaithDiff's modules beside the UNet, at the fixture's sizes (not yet randomized)."""
    m = nn.Module()
    m.condition_embedding = CondEmb(32, 16, 8)
    m.information_transformer_layes = nn.Sequential(RAB(32, 8), RAB(32, 8))
    m.spatial_ch_projs = nn.Linear(32, 16)
    return m


fd_unet = UNet2DConditionModel(**ucfg).eval()
randomize(fd_unet)
extras = fusion_extras()
randomize(extras)
denoise = AutoencoderKL(**vcfg).eval()
randomize(denoise, 0.3)
sd = dict(fd_unet.state_dict())
sd.update(extras.state_dict())
sd.update({"denoise_encoder." + k: v for k, v in denoise.encoder.state_dict().items()
           if not k.startswith("conv_norm_out") and not k.startswith("conv_out")})
torch.save(sd, os.path.join(out, "FaithDiff.bin"))

# what the converter must cache: the empty prompt through both encoders
bpe = os.path.join(os.path.dirname(__file__), "..", "crates", "pgp-core", "assets", "bpe_simple_vocab_16e6.txt.gz")
ids1 = [49406, 49407] + [49407] * 75
ids2 = [49406, 49407] + [0] * 75
o1 = texts[0](torch.tensor([ids1]), output_hidden_states=True)
o2 = texts[1](torch.tensor([ids2]), output_hidden_states=True)
save_file({"prompt_embeds": torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1).contiguous(),
           "pooled_prompt_embeds": o2.text_embeds.contiguous()}, os.path.join(out, "empty_prompt.safetensors"))
print("wrote", out)

# A PGP-DiffSR checkpoint in FaithDiff's layout (pruned depths, PEAM at level 0 with the default
# config), stored as f16 safetensors with the UNet config beside it, as this project's pruning
# tools write it. Written last so the files above do not change.
from make_cases import PEAM

pcfg = dict(ucfg, transformer_layers_per_block=[1, 1, 1], reverse_transformer_layers_per_block=[[2, 2, 2], [2, 2, 2], [1, 1, 1]])
pgp_unet = UNet2DConditionModel(**pcfg).eval()
randomize(pgp_unet)
pextras = fusion_extras()
pextras.peam = nn.ModuleDict({"0": PEAM(16, {"variant": "peam"})})
randomize(pextras)
sd = dict(pgp_unet.state_dict())
sd.update(pextras.state_dict())
sd.update({"denoise_encoder." + k: v for k, v in denoise.encoder.state_dict().items()
           if not k.startswith("conv_norm_out") and not k.startswith("conv_out")})
os.makedirs(os.path.join(out, "pgp"), exist_ok=True)
save_file({k: v.half().contiguous() for k, v in sd.items()}, os.path.join(out, "pgp", "PGP-DiffSR.safetensors"))
json.dump(dict(pgp_unet.config), open(os.path.join(out, "pgp", "unet_config.json"), "w"), indent=1)
print("wrote", os.path.join(out, "pgp"))

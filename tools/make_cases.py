"""Generate conformance cases (reference outputs from diffusers / transformers / torch).

Usage: python make_cases.py OUT_DIR SEED [base|extra|tiled|plain|sd21|pgp|ppa]
Each case is a folder: case.json, weights.safetensors, tensors.safetensors (format: shared/spec/conformance.md).

`base` (the default) writes the cases of shared/conformance (seed as there); `extra` writes the
project's own cases with other shapes and configs: odd latent sizes, batch 2, f16 weights, other
head counts, legacy CLIP configs, other schedules, odd FFT sizes, long and single-token attention.
`tiled` writes VAE cases run with diffusers' enable_tiling() (case.json `"tiling": true`, this
project's extension of the format); `plain` a UNet without the SDXL add-embedding; `sd21` SD2.1-base's UNet and text-encoder shapes
(attention at level 0, `last_hidden_state`); `ppa` the pruning analysis's measures
(kind `ppa_measures`, our extension: two calls as two adjacent steps, hooks on diffusers'
modules); `pgp` pruned
FaithDiff UNets with PEAMs (case.json `"peam"`, also our extension; pgp-model.md §2). Needs torch, diffusers and transformers (CPU is enough);
CI never runs it.
"""
import json, os, sys
import torch, torch.nn as nn, torch.nn.functional as F
from safetensors.torch import save_file
from diffusers import UNet2DConditionModel, AutoencoderKL, EulerDiscreteScheduler
from diffusers.models.autoencoders.vae import Encoder
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

torch.set_grad_enabled(False)
g = torch.Generator()  # seeded in __main__; make_hub_fixture.py imports the modules below


def rnd(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def randomize(module, scale=0.2):
    # diffusers zero-inits some layers; give every parameter a non-trivial value
    for name, p in module.named_parameters():
        if name.endswith("weight") and p.dim() == 1:  # norms
            p.copy_(1.0 + rnd(*p.shape, scale=0.1))
        else:
            p.copy_(rnd(*p.shape, scale=scale / max(1.0, (p[0].numel() ** 0.5) / 4)))


def write(name, kind, config, weights, tensors, tol=1e-4, extra=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    case = {"kind": kind, "config": config, "tolerance": {"max_rel_l2": tol}}
    if extra:
        case.update(extra)
    json.dump(case, open(os.path.join(d, "case.json"), "w"), indent=1, default=list)
    if weights is not None:
        save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(d, "weights.safetensors"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "tensors.safetensors"))
    print("wrote", d)


def unet_cfg(ch, depths, rev, heads, cross, ted, pooled, groups, sample):
    c = dict(sample_size=sample, in_channels=4, out_channels=4,
             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
             up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
             block_out_channels=ch, layers_per_block=2, transformer_layers_per_block=depths,
             attention_head_dim=heads, cross_attention_dim=cross, addition_embed_type="text_time",
             addition_time_embed_dim=ted, projection_class_embeddings_input_dim=6 * ted + pooled,
             use_linear_projection=True, norm_num_groups=groups)
    if rev is not None:
        c["reverse_transformer_layers_per_block"] = rev
    return c


def unet_inputs(B, h, w, L, cross, pooled):
    return dict(sample=rnd(B, 4, h, w), timestep=torch.tensor([951.0, 451.0][:B]),
                encoder_hidden_states=rnd(B, L, cross), text_embeds=rnd(B, pooled),
                time_ids=torch.tensor([[8.0 * h, 8.0 * w, 0.0, 4.0, 1024.0, 1024.0]] * B))


def unet_case(name, cfg, B, h, w, mid_depth=None, f16_weights=False):
    u = UNet2DConditionModel(**cfg).eval()
    if mid_depth is not None:
        tb = u.mid_block.attentions[0].transformer_blocks
        while len(tb) > mid_depth:
            del tb[-1]
    randomize(u)
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    x = unet_inputs(B, h, w, 7, cfg["cross_attention_dim"], pooled)
    sd = u.state_dict()
    if f16_weights:
        sd = {k: v.half() for k, v in sd.items()}
        u.load_state_dict({k: v.float() for k, v in sd.items()})
    out = u(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"],
            added_cond_kwargs={"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]}).sample
    cfg = dict(cfg)
    if mid_depth is not None:
        cfg["mid_transformer_layers_per_block"] = mid_depth
    write(name, "unet", cfg, sd, {**x, "expected": out})
    return u, x


class CondEmb(nn.Module):  # FaithDiff's ControlNetConditioningEmbedding(320, 512): norm -> conv -> silu -> conv
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.conv_in = nn.Conv2d(cin, cin, 3, padding=1)
        self.norm_in = nn.GroupNorm(num_channels=cin, num_groups=groups, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return self.conv_out(F.silu(self.conv_in(self.norm_in(x))))


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class RAB(nn.Module):  # CLIP-style residual attention block, batch_first=False as in FaithDiff
    def __init__(self, d, h):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, h)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d, 2 * d))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(2 * d, d))
        self.ln_2 = nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x), self.ln_1(x), self.ln_1(x), need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def faithdiff_case(name, cfg, lq_ch, B, h, w, groups, heads=8):
    u = UNet2DConditionModel(**cfg).eval()
    c0 = cfg["block_out_channels"][0]
    extras = nn.Module()
    extras.condition_embedding = CondEmb(lq_ch, c0, groups)
    extras.information_transformer_layes = nn.Sequential(RAB(2 * c0, heads), RAB(2 * c0, heads))
    extras.spatial_ch_projs = nn.Linear(2 * c0, c0)
    randomize(u)
    randomize(extras)
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    x = unet_inputs(B, h, w, 7, cfg["cross_attention_dim"], pooled)
    x["input_embedding"] = rnd(B, lq_ch, h, w)
    # FaithDiff forward: fuse after conv_in, then the rest of the SDXL UNet
    captured = {}

    def hook(mod, inp, out):
        s = out
        cond = extras.condition_embedding(x["input_embedding"])
        bsz, ch, hh, ww = cond.shape
        feat = torch.cat([s, cond], 1).view(bsz, 2 * ch, hh * ww).transpose(1, 2)
        feat = extras.information_transformer_layes(feat)
        alpha = extras.spatial_ch_projs(feat).transpose(1, 2).reshape(bsz, ch, hh, ww)
        return s + alpha

    hd = u.conv_in.register_forward_hook(hook)
    out = u(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"],
            added_cond_kwargs={"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]}).sample
    hd.remove()
    sd = dict(u.state_dict())
    sd.update(extras.state_dict())
    write(name, "faithdiff_unet", cfg, sd, {**x, "expected": out},
          extra={"faithdiff": {"lq_channels": lq_ch, "align_heads": heads, "align_layers": 2, "cond_norm_groups": groups}})


def phase_exchange(f, h):
    phase = torch.angle(torch.fft.rfft2(f, norm="backward"))
    amp = torch.abs(torch.fft.rfft2(h, norm="backward"))
    return torch.fft.irfft2(amp * torch.exp(1j * phase), s=h.shape[-2:], norm="backward")


class PEAM(nn.Module):  # pgp-model.md section 2, with the project's choices (see models/peam.rs)
    def __init__(self, C, cfg, lq_ch=None):
        super().__init__()
        self.variant, self.slope = cfg["variant"], cfg.get("negative_slope", 0.2)
        n, hid = cfg.get("stacked_convs", 11) + 1, cfg.get("hidden", 64)
        if self.variant in ("peam", "fusion_conv"):
            self.convs = nn.ModuleList(
                nn.Conv2d(2 * C if i == 0 else hid, 2 * C if i == n - 1 else hid, 3, padding=1) for i in range(n))
        if lq_ch is not None:
            self.lq_proj = nn.Conv2d(lq_ch, C, 1)

    def forward(self, f, h):
        if hasattr(self, "lq_proj"):
            f = self.lq_proj(F.adaptive_avg_pool2d(f, h.shape[-2:]))
        if self.variant == "add":
            return h + f
        if self.variant == "phase_change":
            return phase_exchange(f, h)
        base = phase_exchange(f, h) if self.variant == "peam" else h
        e = torch.cat([base if self.variant == "peam" else f, h], 1)
        for i, conv in enumerate(self.convs):
            e = conv(e)
            if i + 1 < len(self.convs):
                e = F.leaky_relu(e, self.slope)
        a, b = e.chunk(2, 1)
        return a * base + b


def pgp_case(name, cfg, peam_cfg, lq_ch, B, h, w, groups, heads=8):
    """FaithDiff's UNet (pruned depths in cfg) with PEAMs at peam_cfg["levels"]."""
    u = UNet2DConditionModel(**cfg).eval()
    c0 = cfg["block_out_channels"][0]
    keep = peam_cfg.get("keep_faithdiff_fusion", True)
    extras = nn.Module()
    extras.condition_embedding = CondEmb(lq_ch, c0, groups)
    if keep:
        extras.information_transformer_layes = nn.Sequential(RAB(2 * c0, heads), RAB(2 * c0, heads))
        extras.spatial_ch_projs = nn.Linear(2 * c0, c0)
    level_ch = [c0] + list(cfg["block_out_channels"])
    extras.peam = nn.ModuleDict({str(l): PEAM(level_ch[l], peam_cfg, None if l == 0 else c0)
                                 for l in peam_cfg["levels"]})
    randomize(u)
    randomize(extras)
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    x = unet_inputs(B, h, w, 7, cfg["cross_attention_dim"], pooled)
    x["input_embedding"] = rnd(B, lq_ch, h, w)
    state = {}

    def at_conv_in(mod, inp, out):
        s = out
        cond = extras.condition_embedding(x["input_embedding"])
        state["f"] = cond
        if keep:
            bsz, ch, hh, ww = cond.shape
            feat = torch.cat([s, cond], 1).view(bsz, 2 * ch, hh * ww).transpose(1, 2)
            feat = extras.information_transformer_layes(feat)
            s = s + extras.spatial_ch_projs(feat).transpose(1, 2).reshape(bsz, ch, hh, ww)
        return extras.peam["0"](cond, s) if "0" in extras.peam else s

    def at_down(level):
        def hook(mod, inp, out):
            hs, res = out
            hs = extras.peam[str(level)](state["f"], hs)
            return hs, res[:-1] + (hs,)
        return hook

    hooks = [u.conv_in.register_forward_hook(at_conv_in)]
    hooks += [u.down_blocks[l - 1].register_forward_hook(at_down(l)) for l in peam_cfg["levels"] if l > 0]
    out = u(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"],
            added_cond_kwargs={"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]}).sample
    for hd in hooks:
        hd.remove()
    sd = dict(u.state_dict())
    sd.update(extras.state_dict())
    write(name, "faithdiff_unet", cfg, sd, {**x, "expected": out},
          extra={"faithdiff": {"lq_channels": lq_ch, "align_heads": heads, "align_layers": 2, "cond_norm_groups": groups},
                 "peam": peam_cfg})


def vae_cases(prefix, ch, groups, H, W):
    cfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(ch),
               up_block_types=["UpDecoderBlock2D"] * len(ch), block_out_channels=ch, layers_per_block=2,
               latent_channels=4, norm_num_groups=groups, sample_size=H, scaling_factor=0.13025)
    v = AutoencoderKL(**cfg).eval()
    randomize(v, 0.3)
    img = rnd(1, 3, H, W).clamp(-1, 1)
    mean = v.encode(img).latent_dist.mean
    lat = rnd(1, 4, H // 8, W // 8)
    dec = v.decode(lat).sample
    sd = v.state_dict()
    write(prefix + "_encode", "vae_encode", cfg, sd, {"image": img, "expected": mean})
    write(prefix + "_decode", "vae_decode", cfg, sd, {"latents": lat, "expected": dec})
    # FaithDiff denoise_encoder: the VAE encoder without conv_norm_out/conv_act/conv_out
    enc = v.encoder
    s = enc.conv_in(img)
    for blk in enc.down_blocks:
        s = blk(s)
    s = enc.mid_block(s)
    dsd = {"denoise_encoder." + k: t for k, t in enc.state_dict().items()
           if not k.startswith("conv_norm_out") and not k.startswith("conv_out")}
    write(prefix + "_denoise_encoder", "denoise_encoder", cfg, dsd, {"image": img, "expected": s})


def vae_tiled_cases(prefix, ch, groups, H, W, sample):
    """diffusers' enable_tiling(): images over `sample` pixels are encoded/decoded in tiles."""
    cfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(ch),
               up_block_types=["UpDecoderBlock2D"] * len(ch), block_out_channels=ch, layers_per_block=1,
               latent_channels=4, norm_num_groups=groups, sample_size=sample, scaling_factor=0.13025)
    v = AutoencoderKL(**cfg).eval()
    randomize(v, 0.3)
    v.enable_tiling()
    img = rnd(1, 3, H, W).clamp(-1, 1)
    mean = v.encode(img).latent_dist.mean
    f = 2 ** (len(ch) - 1)
    lat = rnd(1, 4, H // f, W // f)
    dec = v.decode(lat).sample
    sd = v.state_dict()
    write(prefix + "_encode", "vae_encode", cfg, sd, {"image": img, "expected": mean}, extra={"tiling": True})
    write(prefix + "_decode", "vae_decode", cfg, sd, {"latents": lat, "expected": dec}, extra={"tiling": True})
    # FaithDiff's denoise_encoder with its own tiling (its Encoder.tiled_encode, enabled by FaithDiff's
    # scripts): tiles of `sample` px every 0.75*sample, blended over a quarter of sample/8 feature rows,
    # cropped to the rest, and used as soon as a side of the image exceeds sample/8 (sic).
    enc = v.encoder

    def trunk(x):
        x = enc.conv_in(x)
        for blk in enc.down_blocks:
            x = blk(x)
        return enc.mid_block(x)

    lat_min = sample // 8
    stride, extent = int(sample * 0.75), int(lat_min * 0.25)
    assert H > lat_min or W > lat_min
    rows = [[trunk(img[:, :, i:i + sample, j:j + sample]) for j in range(0, W, stride)] for i in range(0, H, stride)]
    out_rows = []
    for i, row in enumerate(rows):
        out = []
        for j, t in enumerate(row):
            if i > 0:
                t = v.blend_v(rows[i - 1][j], t, extent)
            if j > 0:
                t = v.blend_h(row[j - 1], t, extent)
            out.append(t[:, :, :lat_min - extent, :lat_min - extent])
        out_rows.append(torch.cat(out, 3))
    feats = torch.cat(out_rows, 2)
    dsd = {"denoise_encoder." + k: t for k, t in enc.state_dict().items()
           if not k.startswith("conv_norm_out") and not k.startswith("conv_out")}
    write(prefix + "_denoise_encoder", "denoise_encoder", cfg, dsd, {"image": img, "expected": feats},
          extra={"tiling": True})


def clip_cases(prefix, vocab, hidden, layers, heads, proj, legacy_eos=False, B=2):
    eos = vocab - 1
    ids = torch.randint(1, vocab - 2, (B, 77), generator=g)
    ids[:, 0] = vocab - 2  # bos
    ids[0, 9] = eos
    ids[0, 10:] = eos  # tokenizer 1 pads with eos
    ids[1, 5] = eos
    ids[1, 6:] = 0  # tokenizer 2 pads with 0
    for name, act, cls in [("_l", "quick_gelu", CLIPTextModel), ("_g", "gelu", CLIPTextModelWithProjection)]:
        cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                             hidden_act=act, projection_dim=proj, bos_token_id=vocab - 2,
                             eos_token_id=2 if legacy_eos else eos,
                             pad_token_id=eos)
        m = cls(cfg).eval()
        randomize(m, 0.3)
        o = m(ids, output_hidden_states=True)
        pooled = o.text_embeds if hasattr(o, "text_embeds") else o.pooler_output
        write(prefix + name, "clip_text_with_projection" if name == "_g" else "clip_text", cfg.to_dict(),
              m.state_dict(), {"input_ids": ids, "expected_penultimate": o.hidden_states[-2],
                               "expected_pooled": pooled})


def euler_case(name, steps, spacing="leading"):
    cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
               prediction_type="epsilon", timestep_spacing=spacing, steps_offset=1, interpolation_type="linear",
               use_karras_sigmas=False)
    s = EulerDiscreteScheduler(**cfg)
    s.set_timesteps(steps)
    write(name, "euler_schedule", cfg, None,
          {"expected_timesteps": s.timesteps.float(), "expected_sigmas": s.sigmas.float(),
           "expected_init_noise_sigma": torch.tensor([float(s.init_noise_sigma)])},
          tol=1e-5, extra={"num_inference_steps": steps})


def phase_exchange_case(name, B, C, h, w):
    Fq, Hq = rnd(B, C, h, w), rnd(B, C, h, w)
    phase = torch.angle(torch.fft.rfft2(Fq.double(), norm="backward"))
    amp = torch.abs(torch.fft.rfft2(Hq.double(), norm="backward"))
    out = torch.fft.irfft2(amp * torch.exp(1j * phase), s=(h, w), norm="backward")
    write(name, "phase_exchange", {}, None, {"lq": Fq, "unet": Hq, "expected": out.float()})


def ppa_case(name, cfg, B, h, w):
    """The PPA measures (pgp-model.md §3) through hooks on diffusers' modules: two UNet calls as
    two adjacent steps; coarse = each level's output between the calls, fine = each decoder
    BasicTransformerBlock's input against its output in each call."""
    u = UNet2DConditionModel(**cfg).eval()
    randomize(u)
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    x = unet_inputs(B, h, w, 7, cfg["cross_attention_dim"], pooled)
    levels, blocks = {}, {}

    def at_level(n):
        def hook(mod, inp, out):
            levels.setdefault(n, []).append(out[0] if isinstance(out, tuple) else out)
        return hook

    for i, b in enumerate(u.down_blocks):
        b.register_forward_hook(at_level(f"down_blocks.{i}"))
    u.mid_block.register_forward_hook(at_level("mid_block"))
    for i, b in enumerate(u.up_blocks):
        b.register_forward_hook(at_level(f"up_blocks.{i}"))
        for j, a in enumerate(getattr(b, "attentions", None) or []):
            for k, tb in enumerate(a.transformer_blocks):
                def at_block(mod, args, kwargs, out, n=f"up_blocks.{i}.attentions.{j}.transformer_blocks.{k}"):
                    blocks.setdefault(n, []).append((args[0] if args else kwargs["hidden_states"], out))
                tb.register_forward_hook(at_block, with_kwargs=True)
    sample_b = 0.9 * x["sample"] + 0.3 * rnd(B, 4, h, w)
    t_a, t_b = torch.tensor([951.0] * B), torch.tensor([901.0] * B)
    for s, t in ((x["sample"], t_a), (sample_b, t_b)):
        u(s, t, encoder_hidden_states=x["encoder_hidden_states"],
          added_cond_kwargs={"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]})

    def phi(a, b):  # 1 - cos over each sample's flattened feature, mean over samples
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        return (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()

    def kl(a, b, dim):  # KL(softmax(a) || softmax(b)) over channels, mean over positions and samples
        lp, lq = F.log_softmax(a, dim), F.log_softmax(b, dim)
        return (lp.exp() * (lp - lq)).sum(dim).reshape(a.shape[0], -1).mean(1).mean()

    t = dict(sample_a=x["sample"], sample_b=sample_b, timestep_a=t_a, timestep_b=t_b,
             encoder_hidden_states=x["encoder_hidden_states"], text_embeds=x["text_embeds"],
             time_ids=x["time_ids"])
    t["expected_coarse_phi_cos"] = torch.stack([phi(a, b) for a, b in levels.values()])[:, None]
    t["expected_coarse_psi_kl"] = torch.stack([kl(a, b, 1) for a, b in levels.values()])[:, None]
    t["expected_fine_phi_cos"] = torch.stack([torch.stack([phi(i, o) for i, o in v]) for v in blocks.values()])
    t["expected_fine_psi_kl"] = torch.stack([torch.stack([kl(i, o, 2) for i, o in v]) for v in blocks.values()])
    write(name, "ppa_measures", cfg, u.state_dict(), t, tol=1e-4)


def attention_case(name, B, H, S, Skv, D):
    q, k, v = rnd(B, H, S, D), rnd(B, H, Skv, D), rnd(B, H, Skv, D)
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    write(name, "attention", {}, None, {"q": q, "k": k, "v": v, "expected": out})


if __name__ == "__main__":
    OUT, SEED = sys.argv[1], int(sys.argv[2])
    SET = sys.argv[3] if len(sys.argv) > 3 else "base"
    g.manual_seed(SEED)
    if SET == "base":
        cfg = unet_cfg((16, 32, 64), (1, 2, 3), None, (1, 2, 4), 32, 8, 16, 8, 16)
        unet_case("unet_sdxl_tiny", cfg, 1, 16, 16)
        cfgp = unet_cfg((16, 32, 64), (1, 1, 1), [[2, 2, 2], [2, 2, 2], [1, 1, 1]], (1, 2, 4), 32, 8, 16, 8, 16)
        unet_case("unet_pruned_tiny", cfgp, 1, 16, 16, mid_depth=1)
        faithdiff_case("faithdiff_unet_tiny", cfg, 32, 1, 16, 16, 8)
        vae_cases("vae_tiny", (16, 32, 32, 32), 8, 64, 64)
        clip_cases("clip_tiny", 1000, 32, 3, 4, 24)
        euler_case("euler_leading_20", 20)
        phase_exchange_case("phase_exchange_16", 1, 4, 16, 16)
        attention_case("attention_256", 1, 2, 256, 256, 16)
    if SET == "extra":
        # odd latent sides (upsampling to the skip's size), batch 2, other head counts
        cfg = unet_cfg((16, 32, 64), (1, 2, 1), None, (2, 2, 4), 24, 8, 12, 8, 16)
        unet_case("unet_odd_b2", cfg, 2, 13, 11)
        # f16 weights, computed in f32
        cfg = unet_cfg((16, 32, 64), (1, 1, 2), [[1, 2, 1], [2, 1, 1], [1, 1, 1]], (1, 2, 4), 32, 8, 16, 8, 16)
        unet_case("unet_f16_weights_pruned", cfg, 1, 8, 8, mid_depth=2, f16_weights=True)
        # a different layout: int head count, deeper levels, wider text embeddings
        cfg = unet_cfg((32, 32, 64), 2, None, 4, 40, 4, 8, 16, 16)
        cfg["layers_per_block"] = 1
        unet_case("unet_int_heads", cfg, 1, 10, 6)
        # FaithDiff with batch 2: the alignment blocks attend across the batch axis
        cfg = unet_cfg((16, 32, 64), (1, 1, 1), None, (1, 2, 4), 32, 8, 16, 8, 16)
        faithdiff_case("faithdiff_b2_odd", cfg, 24, 2, 9, 7, 8, heads=4)
        vae_cases("vae_odd", (16, 32, 32), 8, 40, 56)
        clip_cases("clip_legacy_eos", 1000, 48, 2, 6, 16, legacy_eos=True, B=3)
        euler_case("euler_leading_7", 7)
        euler_case("euler_trailing_4", 4, "trailing")
        euler_case("euler_linspace_30", 30, "linspace")
        phase_exchange_case("phase_exchange_odd_b2", 2, 3, 7, 10)
        phase_exchange_case("phase_exchange_1x1", 1, 2, 1, 1)
        phase_exchange_case("phase_exchange_96x40", 1, 2, 96, 40)
        attention_case("attention_cross_77", 2, 3, 64, 77, 64)
        attention_case("attention_one_token", 1, 2, 1, 5, 8)
        attention_case("attention_d80_long", 1, 2, 300, 300, 80)
    if SET == "pgp":
        cfg = unet_cfg((8, 16, 32), (1, 1, 1), [[4, 4, 4], [2, 2, 2], [1, 1, 1]], (1, 2, 4), 16, 8, 8, 4, 16)
        # the default placement (level 0, after FaithDiff's fusion) plus a deeper level, odd sides
        pgp_case("pgp_peam_levels_0_2", cfg, {"levels": [0, 2], "variant": "peam", "hidden": 8, "stacked_convs": 3},
                 24, 1, 10, 14, 4)
        # PEAM in place of FaithDiff's fusion, the Table 5 variants, batch 2
        pgp_case("pgp_fusion_conv_replace_b2", cfg, {"levels": [0, 1], "variant": "fusion_conv", "hidden": 8,
                 "stacked_convs": 2, "negative_slope": 0.1, "keep_faithdiff_fusion": False}, 16, 2, 8, 8, 4)
        pgp_case("pgp_phase_change_l3", cfg, {"levels": [3], "variant": "phase_change"}, 16, 1, 9, 12, 4)
        pgp_case("pgp_add_replace", cfg, {"levels": [0, 1], "variant": "add", "keep_faithdiff_fusion": False},
                 16, 1, 8, 6, 4)
    if SET == "ppa":  # the pruning analysis's measures, batch 2 (averaged over samples)
        cfg = unet_cfg((16, 32, 64), (1, 2, 2), None, (1, 2, 4), 32, 8, 16, 8, 16)
        ppa_case("ppa_measures_b2", cfg, 2, 12, 10)
    if SET == "tiled":
        vae_tiled_cases("vae_tiled", (16, 32, 32, 32), 8, 88, 72, 32)
    if SET == "sd21":  # SD2.1-base's shapes: attention at level 0, head lists, no add-embedding
        cfg = dict(sample_size=16, in_channels=4, out_channels=4,
                   down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                   block_out_channels=[16, 32, 32], layers_per_block=2, attention_head_dim=[2, 4, 4],
                   cross_attention_dim=24, use_linear_projection=True, norm_num_groups=8,
                   upcast_attention=False, act_fn="silu", flip_sin_to_cos=True, freq_shift=0)
        u = UNet2DConditionModel(**cfg).eval()
        randomize(u)
        x = dict(sample=rnd(1, 4, 14, 10), timestep=torch.tensor([999.0]), encoder_hidden_states=rnd(1, 77, 24))
        write("unet_sd21_tiny", "unet", cfg, u.state_dict(), {**x, "expected": u(**x).sample})
        # OpenCLIP-H's text tower as transformers has it: gelu, no projection; its conditioning is
        # last_hidden_state (after the final LayerNorm); SD2's tokenizer pads with `!` (id 0).
        vocab = 1000
        ids = torch.randint(1, vocab - 2, (2, 77), generator=g)
        ids[:, 0] = vocab - 2
        ids[0, 12] = vocab - 1
        ids[0, 13:] = 0
        ids[1, 3] = vocab - 1
        ids[1, 4:] = 0
        tcfg = CLIPTextConfig(vocab_size=vocab, hidden_size=24, intermediate_size=96, num_hidden_layers=3,
                              num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                              bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=1)
        m = CLIPTextModel(tcfg).eval()
        randomize(m, 0.3)
        o = m(ids, output_hidden_states=True)
        write("clip_sd21_tiny", "clip_text", tcfg.to_dict(), m.state_dict(),
              {"input_ids": ids, "expected_penultimate": o.hidden_states[-2], "expected_pooled": o.pooler_output,
               "expected_last_hidden_state": o.last_hidden_state})
    if SET == "plain":  # a UNet without the SDXL add-embedding (SD-1.x style conditioning)
        cfg = unet_cfg((16, 32, 64), 1, None, (2, 2, 4), 24, 8, 12, 8, 16)
        del cfg["addition_embed_type"], cfg["addition_time_embed_dim"], cfg["projection_class_embeddings_input_dim"]
        u = UNet2DConditionModel(**cfg).eval()
        randomize(u)
        x = dict(sample=rnd(1, 4, 12, 10), timestep=torch.tensor([321.0]), encoder_hidden_states=rnd(1, 7, 24))
        write("unet_plain", "unet", cfg, u.state_dict(), {**x, "expected": u(**x).sample})

"""Reference outputs for the pipeline's image steps (pipeline.md steps 1 and 9).

Usage: python make_image_cases.py OUT_DIR
  lanczos.safetensors  u8 RGB images (H, W, 3) and PIL's Image.LANCZOS resize of each
                       (`in_{i}`, `out_{i}`), up and down, integer and fractional factors;
  bicubic.safetensors  the same images through Image.BICUBIC;
  color_fix.safetensors `target`, `source` [1, 3, H, W] in [0, 1] and StableSR/FaithDiff's
                       `adain` and `wavelet` colour fix of target towards source (before the
                       final clamp), computed as utils/color_fix.py does.
Needs torch, Pillow and safetensors; CI never runs it.
"""
import os, sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

def calc_mean_std(feat, eps=1e-5):
    b, c = feat.shape[:2]
    var = feat.reshape(b, c, -1).var(dim=2) + eps
    return feat.reshape(b, c, -1).mean(dim=2).view(b, c, 1, 1), var.sqrt().view(b, c, 1, 1)


def adain(content, style):
    sm, ss = calc_mean_std(style)
    cm, cs = calc_mean_std(content)
    return (content - cm) / cs * ss + sm


def wavelet_blur(image, radius):
    k = torch.tensor([[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]])
    k = k[None, None].repeat(3, 1, 1, 1)
    image = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(image, k, groups=3, dilation=radius)


def wavelet_decomposition(image, levels=5):
    high = torch.zeros_like(image)
    for i in range(levels):
        low = wavelet_blur(image, 2 ** i)
        high += image - low
        image = low
    return high, low


def wavelet(content, style):
    ch, _ = wavelet_decomposition(content)
    _, sl = wavelet_decomposition(style)
    return ch + sl



if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(11)

    cases = {}
    sizes = [((5, 7), (10, 14)), ((9, 13), (27, 39)), ((16, 12), (64, 48)), ((11, 6), (17, 9)),
             ((40, 30), (13, 11)), ((8, 8), (8, 8)), ((3, 50), (6, 100)), ((1, 4), (2, 8))]
    for i, ((h, w), (oh, ow)) in enumerate(sizes):
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        if i == 2:  # smooth content too, where ringing shows
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 2) * 255], -1).astype(np.uint8)
        res = np.asarray(Image.fromarray(img).resize((ow, oh), Image.LANCZOS))
        cases[f"in_{i}"] = torch.from_numpy(img.copy())
        cases[f"out_{i}"] = torch.from_numpy(res.copy())
    save_file(cases, os.path.join(out, "lanczos.safetensors"))
    # The same images through Pillow's BICUBIC (its default for RGB; OSEDiff's ×4 pre-upscale).
    bicubic = {}
    for i, ((h, w), (oh, ow)) in enumerate(sizes):
        img = cases[f"in_{i}"].numpy()
        bicubic[f"in_{i}"] = cases[f"in_{i}"]
        bicubic[f"out_{i}"] = torch.from_numpy(np.asarray(Image.fromarray(img).resize((ow, oh), Image.BICUBIC)).copy())
    save_file(bicubic, os.path.join(out, "bicubic.safetensors"))

    g = torch.Generator().manual_seed(5)
    t = {}
    for name, (h, w) in [("a", (48, 40)), ("b", (70, 33))]:
        target = torch.rand(1, 3, h, w, generator=g)
        source = (torch.rand(1, 3, h, w, generator=g) * 0.5 + 0.2).clamp(0, 1)
        t[f"target_{name}"], t[f"source_{name}"] = target, source
        t[f"adain_{name}"] = adain(target, source)
        t[f"wavelet_{name}"] = wavelet(target, source)
    save_file(t, os.path.join(out, "color_fix.safetensors"))
    print("wrote", sorted(os.listdir(out)))

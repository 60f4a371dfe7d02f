"""The modules OSEDiff and PiSA-SR put LoRAs on, selected as their training scripts select them
(`OSEDiff_gen.initialize_unet` / `initialize_vae`; PiSA-SR uses the same UNet selection): every
non-bias, non-norm parameter whose name contains one of the patterns, grouped into encoder
(`down_blocks`, `conv_in`), decoder (`up_blocks`, `conv_out`) and the rest. Imported by the
fixture generators.
"""


def unet_targets(model):
    patterns = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
                "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]
    enc, dec, oth = [], [], []
    for n, p in model.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pattern in patterns:
            if pattern in n and ("down_blocks" in n or "conv_in" in n):
                enc.append(n.replace(".weight", ""))
                break
            elif pattern in n and ("up_blocks" in n or "conv_out" in n):
                dec.append(n.replace(".weight", ""))
                break
            elif pattern in n:
                oth.append(n.replace(".weight", ""))
                break
    return enc, dec, oth


def vae_targets(model):
    patterns = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]
    out = []
    for n, p in model.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pattern in patterns:
            if pattern in n and "encoder" in n:
                out.append(n.replace(".weight", ""))
            elif "quant_conv" in n and "post_quant_conv" not in n:
                out.append(n.replace(".weight", ""))
    return out

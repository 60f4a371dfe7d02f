"""Fixtures for the safe torch-pickle reader (what `FaithDiff.bin` is: a `torch.save` state dict).

Usage: python make_pickle_cases.py OUT_DIR
Writes:
  state_dict.bin     torch.save of an OrderedDict state dict: f32, f16, bf16, f64, int64 tensors,
                     a transposed (non-contiguous) tensor, two tensors sharing one storage at
                     different offsets, a 0-d tensor, an empty tensor, and `_metadata` as
                     nn.Module.state_dict() attaches it;
  expected.safetensors the same tensors, contiguous (bf16 widened to f32 for safetensors-free
                     comparison is not needed: safetensors stores bf16);
  module.bin         torch.save(nn.Module(...).state_dict()) of a small Linear+Conv stack;
  nested.bin         OSEDiff's osediff.pkl layout in miniature (state dicts inside the dict, ints,
                     lists of names); nested_clash.bin a nested key that equals a flat one;
  malicious.bin      a pickle whose object reduces to os.system (must be rejected, never run);
  legacy.bin         the pre-1.6 non-zip format (must be rejected with a clear message).
Needs torch and safetensors; CI never runs it.
"""
import collections, os, sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(3)

base = torch.randn(40, generator=g)
sd = collections.OrderedDict()
sd["a.weight"] = torch.randn(3, 4, generator=g)
sd["a.bias"] = torch.randn(3, generator=g).half()
sd["b.weight"] = torch.randn(2, 5, generator=g).to(torch.bfloat16)
sd["b.double"] = torch.randn(2, 2, generator=g).double()
sd["c.index"] = torch.arange(6, dtype=torch.int64).reshape(2, 3)
sd["d.transposed"] = torch.randn(4, 3, generator=g).t()  # strides (1, 3)
sd["e.first"] = base[:12].view(3, 4)  # shares `base`'s storage
sd["e.second"] = base[20:30]  # offset 20 into the same storage
sd["f.scalar"] = torch.tensor(2.5)
sd["g.empty"] = torch.zeros(0, 3)
sd._metadata = collections.OrderedDict([("", {"version": 1}), ("a", {"version": 2})])
torch.save(sd, os.path.join(out, "state_dict.bin"))
save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, "expected.safetensors"))

m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Conv2d(2, 2, 3))
torch.save(m.state_dict(), os.path.join(out, "module.bin"))
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(out, "module.safetensors"))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pgp_pwned",))


# OSEDiff's osediff.pkl layout in miniature: state dicts inside the dict, plain values beside.
torch.save({"unet_lora_encoder_modules": ["conv_in", "to_q"], "rank_unet": 4, "flags": (True, 0.5),
            "state_dict_unet": {"conv_in.base_layer.weight": torch.randn(8, 4, 3, 3, generator=g),
                                "conv_in.lora_A.default_encoder.weight": torch.randn(4, 3, 3, 3, generator=g)},
            "state_dict_vae": {"encoder.conv_in.lora_B.default_encoder.weight": torch.randn(2, 4, 1, 1, generator=g)}},
           os.path.join(out, "nested.bin"))
torch.save({"a": {"b": torch.zeros(1)}, "a.b": torch.zeros(1)}, os.path.join(out, "nested_clash.bin"))
torch.save({"x": torch.zeros(1), "evil": Evil()}, os.path.join(out, "malicious.bin"))
torch.save({"x": torch.zeros(2)}, os.path.join(out, "legacy.bin"), _use_new_zipfile_serialization=False)
print("wrote", sorted(os.listdir(out)))

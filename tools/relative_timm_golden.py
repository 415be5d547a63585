#!/usr/bin/env python3
"""Golden data for CoAtNet's relative attention against timm's own attention module (offline; never
run by the build).

Builds timm.models.maxxvit.Attention2d with timm's RelPosBias (the module coatnet_0_rw_224's
transformer blocks use: head-first qkv 1x1 conv, pre-softmax bias table [(2H-1)(2W-1), heads]
indexed query minus key) on non-square grids, with random weights and a random table, runs it in
float64 and writes tests/data/relative_timm_golden.safetensors: per case "<case>.x" [B, C, H, W],
"<case>.qkv.weight", "<case>.qkv.bias", "<case>.proj.weight", "<case>.proj.bias",
"<case>.table" (timm's layout) and "<case>.out" [B, C_out, H, W], plus metadata describing the
cases. tests/test_relative_golden.cpp rebuilds the module from relative_attention_2d and the 1x1
convolutions of coatnet/ops.hpp.

Usage: python3 tools/relative_timm_golden.py   (needs torch, timm, safetensors)
"""
import json
import os
from functools import partial

import torch
from safetensors.torch import save_file
from timm.models.maxxvit import Attention2d
from timm.layers.pos_embed_rel import RelPosBias

CASES = [  # name, B, C_in, C_out, dim_head, H, W
    ("a", 2, 24, 24, 8, 5, 7),
    ("b", 1, 16, 32, 4, 3, 9),
    ("c", 1, 32, 32, 32, 7, 7),
]


def main():
    torch.manual_seed(20261123)
    tensors, meta = {}, []
    for name, B, cin, cout, dh, H, W in CASES:
        m = Attention2d(cin, cout, dim_head=dh, expand_first=False,
                        rel_pos_cls=partial(RelPosBias, window_size=(H, W))).eval()
        m.fused_attn = False
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.3)
        m = m.double()
        x = torch.randn(B, cin, H, W).double()  # float32 values: the C++ float input is exact
        with torch.no_grad():
            out = m(x)
        sd = m.state_dict()
        f = lambda t: t.detach().float().contiguous()
        tensors[f"{name}.x"] = f(x)
        for k in ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]:
            tensors[f"{name}.{k}"] = f(sd[k])
        tensors[f"{name}.table"] = f(sd["rel_pos.relative_position_bias_table"])
        tensors[f"{name}.out"] = f(out)
        meta.append({"name": name, "B": B, "cin": cin, "cout": cout, "dim_head": dh, "H": H, "W": W,
                     "heads": m.num_heads})
        print(name, "heads", m.num_heads, "out std", float(out.std()))
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "relative_timm_golden.safetensors")
    save_file(tensors, path, metadata={"cases": json.dumps(meta)})


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden data for attnkit's CoAtNet relative attention tests, computed with PyTorch.

Run offline (never by the build):  pip install torch numpy && python3 tools/relative_golden.py
Writes tests/data/relative_golden.txt (a few KiB of text) with two kinds of cases:

  resize  heads ih iw oh ow   then heads*ih*iw input values and heads*oh*ow output values:
          torch.nn.functional.interpolate(table[None], size=(oh, ow), mode="bicubic",
          align_corners=False)[0], what timm's resize_rel_pos_bias_table_simple does to
          (heads, 2H-1, 2W-1) tables.
  attn    mode offset B heads H W dk dv   then q [B,heads,L,dk], k, v, table [heads,2H-1,2W-1]
          and out [B,heads,L,dv]: softmax(scale q k^T + bias) v (pre) or (softmax(scale q k^T) +
          bias) v (post), the bias gathered as timm's RelPosBias does it: index
          (dy + H - 1) * (2W - 1) + (dx + W - 1) into the flattened table, (dy, dx) = query minus
          key (offset "qmk", timm/Swin) or key minus query ("kmq", TF maxvit).

All values are float64 printed with 17 significant digits; inputs come from a seeded generator.
"""
import os

import torch
import torch.nn.functional as F

torch.manual_seed(20261123)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "relative_golden.txt")


def values(t):
    return " ".join("%.17g" % x for x in t.reshape(-1).tolist())


def rel_index(H, W, offset):
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # 2, L
    rel = coords[:, :, None] - coords[:, None, :]  # query minus key: [2, Lq, Lk]
    if offset == "kmq":
        rel = -rel
    return (rel[0] + H - 1) * (2 * W - 1) + (rel[1] + W - 1)  # [L, L]


def attention(q, k, v, table, H, W, mode, offset):
    heads = table.shape[0]
    bias = table.reshape(heads, -1)[:, rel_index(H, W, offset)]  # [heads, L, L]
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if mode == "pre":
        return torch.softmax(s + bias, dim=-1) @ v
    return (torch.softmax(s, dim=-1) + bias) @ v


def main():
    lines = []
    for heads, ih, iw, oh, ow in [(2, 13, 13, 27, 27), (1, 3, 3, 5, 5), (2, 7, 11, 13, 5), (1, 27, 27, 13, 13)]:
        t = torch.randn(heads, ih, iw, dtype=torch.float64)
        r = F.interpolate(t[None], size=(oh, ow), mode="bicubic", align_corners=False)[0]
        lines += ["resize %d %d %d %d %d" % (heads, ih, iw, oh, ow), values(t), values(r)]
    for mode in ("pre", "post"):
        for offset in ("qmk", "kmq"):
            for B, heads, H, W, dk, dv in [(2, 2, 3, 5, 8, 6), (1, 2, 7, 7, 8, 5)]:
                L = H * W
                q = torch.randn(B, heads, L, dk, dtype=torch.float64)
                k = torch.randn(B, heads, L, dk, dtype=torch.float64)
                v = torch.randn(B, heads, L, dv, dtype=torch.float64)
                table = 0.5 * torch.randn(heads, 2 * H - 1, 2 * W - 1, dtype=torch.float64)
                out = attention(q, k, v, table, H, W, mode, offset)
                lines += ["attn %s %s %d %d %d %d %d %d" % (mode, offset, B, heads, H, W, dk, dv)]
                lines += [values(x) for x in (q, k, v, table, out)]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.normpath(OUT), os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()

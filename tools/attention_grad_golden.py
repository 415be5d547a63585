#!/usr/bin/env python3
"""Golden gradients of exact attention for attnkit's backward tests, computed with PyTorch autograd.

Run offline (never by the build) with any PyTorch (plain tensor ops and autograd, no SDPA), e.g.
Debian's python3-torch or the venv of tools/torch_sdpa_bench.py:
  /tmp/sdpa-venv/bin/python tools/attention_grad_golden.py
Writes tests/data/attention_grad_golden.txt (a few KiB of text), one case per block:

  case B H Hkv Lq Lk dk dv causal scale nlen len_0 .. len_{nlen-1}
  then the values of q [B,H,Lq,dk], k [B,Hkv,Lk,dk], v [B,Hkv,Lk,dv], dout [B,H,Lq,dv],
  out, lse [B,H,Lq] (-inf printed as -inf), dq, dk, dv, one line each, row-major.

causal: none, top_left (query i sees keys j <= i) or bottom_right (j <= i + Lk - Lq); key_lengths
(nlen = B, or 0 for none) hide keys j >= len_b; scale 0 means 1/sqrt(dk). A query that sees no key
has out = 0, lse = -inf and dq = 0. Grouped-query heads: k and v are repeated over the H/Hkv heads
of each kv head with repeat_interleave, so autograd sums their gradients over the group. The loss is
sum(out * dout), so the gradients are the vector-Jacobian products with dout. Everything is float64,
printed with 17 significant digits; inputs come from a seeded generator.
"""
import math
import os

import torch

torch.manual_seed(20261207)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "attention_grad_golden.txt")


def values(t):
    return " ".join("%.17g" % x if math.isfinite(x) else ("-inf" if x < 0 else "inf") for x in t.reshape(-1).tolist())


def visible(B, Lq, Lk, causal, lengths):
    i = torch.arange(Lq)[:, None]
    j = torch.arange(Lk)[None, :]
    if causal == "top_left":
        m = j <= i
    elif causal == "bottom_right":
        m = j <= i + (Lk - Lq)
    else:
        m = torch.ones(Lq, Lk, dtype=torch.bool)
    m = m[None].expand(B, Lq, Lk).clone()
    if lengths:
        for b, n in enumerate(lengths):
            m[b, :, n:] = False
    return m[:, None]  # [B, 1, Lq, Lk]


def attention(q, k, v, causal, lengths, scale):
    B, H, Lq, dk = q.shape
    G = H // k.shape[1]
    kk = k.repeat_interleave(G, dim=1)
    vv = v.repeat_interleave(G, dim=1)
    s = (q @ kk.transpose(-1, -2)) * (scale if scale else dk ** -0.5)
    vis = visible(B, Lq, k.shape[2], causal, lengths)
    s = s.masked_fill(~vis, -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    # rows without a visible key: weights 0 (softmax of all -inf would be NaN)
    p = torch.where(vis, torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None]),
                    torch.zeros_like(s))
    return p @ vv, lse


CASES = [
    # B, H, Hkv, Lq, Lk, dk, dv, causal, scale, key_lengths
    (1, 2, 1, 5, 7, 4, 3, "none", 0.0, []),
    (2, 4, 2, 9, 6, 5, 4, "top_left", 0.0, [6, 3]),
    (1, 2, 2, 6, 11, 8, 8, "bottom_right", 0.7, []),
    (2, 2, 1, 13, 13, 3, 5, "top_left", 0.0, [13, 0]),
]


def main():
    lines = []
    for B, H, Hkv, Lq, Lk, dk, dv, causal, scale, lengths in CASES:
        q = (torch.rand(B, H, Lq, dk, dtype=torch.float64) * 2 - 1).requires_grad_()
        k = (torch.rand(B, Hkv, Lk, dk, dtype=torch.float64) * 2 - 1).requires_grad_()
        v = (torch.rand(B, Hkv, Lk, dv, dtype=torch.float64) * 2 - 1).requires_grad_()
        dout = torch.rand(B, H, Lq, dv, dtype=torch.float64) * 2 - 1
        out, lse = attention(q, k, v, causal, lengths, scale)
        (out * dout).sum().backward()
        header = "case %d %d %d %d %d %d %d %s %.17g %d" % (B, H, Hkv, Lq, Lk, dk, dv, causal, scale, len(lengths))
        lines.append(header + "".join(" %d" % n for n in lengths))
        for t in (q, k, v, dout, out, lse, q.grad, k.grad, v.grad):
            lines.append(values(t.detach()))
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.normpath(OUT), "(%d cases)" % len(CASES))


if __name__ == "__main__":
    main()

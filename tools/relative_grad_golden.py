#!/usr/bin/python3
"""Golden gradients of CoAtNet's 2D relative attention for attnkit's backward tests, from PyTorch autograd.

Run offline (never by the build) with Debian's python3 and its python3-torch (1.13; plain tensor
ops and autograd only, so any later PyTorch gives the same values to rounding):
  apt-get install python3-torch && /usr/bin/python3 tools/relative_grad_golden.py
Writes tests/data/relative_grad_golden.txt (~120 KB of text), one case per block:

  case mode offset B heads Hkv H W dk dv scale nlen len_0 .. len_{nlen-1}
  then the values of q [B,heads,L,dk], k [B,Hkv,L,dk], v [B,Hkv,L,dv], table [heads,2H-1,2W-1],
  dout [B,heads,L,dv], out [B,heads,L,dv], lse [B,heads,L] (-inf printed as -inf), dq, dk, dv and
  dtable [heads,2H-1,2W-1] (summed over the batch), one line each, row-major.

The sequence is an H x W grid in raster order (L = H W, position i at (i / W, i % W)). mode: pre
(pre_softmax) or post (post_softmax); offset: kmq (key_minus_query, (dy, dx) = pos_j - pos_i) or
qmk (query_minus_key, pos_i - pos_j); the bias of query i and key j is
w_ij = table[h, dy + H - 1, dx + W - 1]. s_ij = scale q_i . k_j (scale 0 means 1/sqrt(dk)); key_lengths
(nlen = B, or 0 for none) hide keys j >= len_b.
  pre:  out_i = sum_{j visible} softmax_j(s_ij + w_ij) v_j,      lse_i = logsumexp_{j visible}(s_ij + w_ij)
  post: out_i = sum_{j visible} (softmax_j(s_ij) + w_ij) v_j,    lse_i = logsumexp_{j visible}(s_ij)
A query that sees no key has out = 0, lse = -inf and dq = 0. Grouped-query heads: k and v are
repeated over the heads / Hkv heads of each kv head with repeat_interleave (head h uses kv head
h // (heads / Hkv)), so autograd sums their gradients over the group. The loss is sum(out * dout),
so the gradients are the vector-Jacobian products with dout. Everything is float64, printed with
17 significant digits; inputs come from a seeded generator.
"""
import math
import os

import torch

torch.manual_seed(20261208)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "relative_grad_golden.txt")


def values(t):
    return " ".join("%.17g" % x if math.isfinite(x) else ("-inf" if x < 0 else "inf") for x in t.reshape(-1).tolist())


def rel_index(H, W, offset):
    """[L, L] indices into the flattened [(2H-1)(2W-1)] table of query i (row) and key j (column)."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    y, x = ys.flatten(), xs.flatten()
    dy, dx = y[None, :] - y[:, None], x[None, :] - x[:, None]  # key minus query
    if offset == "qmk":
        dy, dx = -dy, -dx
    return (dy + H - 1) * (2 * W - 1) + (dx + W - 1)


def relative_attention(q, k, v, table, H, W, mode, offset, lengths, scale):
    B, heads, L, dk = q.shape
    G = heads // k.shape[1]
    kk = k.repeat_interleave(G, dim=1)
    vv = v.repeat_interleave(G, dim=1)
    bias = table.reshape(heads, -1)[:, rel_index(H, W, offset)][None]  # [1, heads, L, L]
    s = (q @ kk.transpose(-1, -2)) * (scale if scale else dk ** -0.5)
    vis = torch.ones(B, 1, L, L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        vis[b, :, :, n:] = False
    z = s + bias if mode == "pre" else s
    z = z.masked_fill(~vis, -math.inf)
    lse = torch.logsumexp(z, dim=-1)
    # rows without a visible key: weights 0 (softmax of all -inf would be NaN)
    p = torch.where(vis, torch.exp(z - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None]),
                    torch.zeros_like(z))
    if mode == "post":
        p = p + torch.where(vis, bias, torch.zeros_like(bias))
    return p @ vv, lse


CASES = [
    # mode, offset, B, heads, Hkv, H, W, dk, dv, scale, key_lengths
    ("pre", "kmq", 1, 2, 2, 3, 5, 4, 3, 0.0, []),
    ("post", "qmk", 2, 4, 2, 4, 4, 3, 2, 0.0, [11, 0]),
    ("pre", "qmk", 2, 2, 1, 2, 7, 6, 4, 0.7, [0, 9]),
    ("post", "kmq", 1, 3, 1, 5, 3, 4, 5, 0.0, [13]),
]


def main():
    lines = []
    for mode, offset, B, heads, Hkv, H, W, dk, dv, scale, lengths in CASES:
        L = H * W
        q = (torch.rand(B, heads, L, dk, dtype=torch.float64) * 2 - 1).requires_grad_()
        k = (torch.rand(B, Hkv, L, dk, dtype=torch.float64) * 2 - 1).requires_grad_()
        v = (torch.rand(B, Hkv, L, dv, dtype=torch.float64) * 2 - 1).requires_grad_()
        table = (torch.rand(heads, 2 * H - 1, 2 * W - 1, dtype=torch.float64) - 0.5).requires_grad_()
        dout = torch.rand(B, heads, L, dv, dtype=torch.float64) * 2 - 1
        out, lse = relative_attention(q, k, v, table, H, W, mode, offset, lengths, scale)
        (out * dout).sum().backward()
        for t in (out, q.grad, k.grad, v.grad, table.grad):
            assert torch.isfinite(t).all()
        header = "case %s %s %d %d %d %d %d %d %d %.17g %d" % (mode, offset, B, heads, Hkv, H, W, dk, dv, scale,
                                                              len(lengths))
        lines.append(header + "".join(" %d" % n for n in lengths))
        for t in (q, k, v, table, dout, out, lse, q.grad, k.grad, v.grad, table.grad):
            lines.append(values(t.detach()))
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.normpath(OUT), os.path.getsize(OUT), "bytes (%d cases)" % len(CASES))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden conformance data for attnkit's CoAtNet network, computed with timm's own CoAtNet code.

Run offline (never by the build):
    pip install torch timm safetensors && python3 tools/coatnet_golden.py
(made with torch 2.15, timm 1.0.31; other versions may differ in random streams or layer names).

Builds two reduced-width CoAtNets with timm.models.maxxvit (MaxxVit, MaxxVitCfg, _rw_coat_cfg), fills
every weight with seeded random values (not timm's init: norms get non-trivial affine and running stats,
biases and relative-position tables are non-zero, so every tensor matters), and writes per config NAME:

  tests/data/coatnet_NAME.safetensors     model.state_dict() with timm's names, float32 (plus the int64
                                          BatchNorm num_batches_tracked buffers, as real checkpoints have
                                          them; a loader must ignore those). Metadata (both files):
                                          "timm_config" = JSON {"MaxxVitCfg": the cfg as a dict, "MaxxVit":
                                          {img_size, num_classes}, "timm", "torch", "seed"}.
  tests/data/coatnet_NAME_io.safetensors  float32: input [2,3,64,96] (N(0,1)), stem, stages.0 .. stages.3
                                          (NCHW outputs), features (forward_features, i.e. after model.norm),
                                          logits [2,10]; all computed in float64 from the float32 weights and
                                          input cast up, then rounded to float32. logits_f32: the same logits
                                          computed by torch in float32 (to show how far float32 is).

  rw_tiny     the coatnet_0_rw_224 layout (_rw_coat_cfg(conv_attn_early=True,
              transformer_shortcut_bias=False)), embed_dim (16, 24, 32, 48), depths (2, 2, 2, 2),
              stem_width (8, 16), dim_head 8.
  paper_tiny  the coatnet_0_224 layout (MaxxVitCfg defaults, head_hidden_size), embed_dim (16, 24, 32, 48),
              depths (2, 2, 2, 2), stem_width 16, head_hidden_size 48, dim_head 8.

Both: MaxxVit(cfg, img_size=(64, 96), num_classes=10), eval mode; attention grids 4x6 (stage 2) and 2x3
(stage 3). The float64 reference uses timm's explicit (unfused) attention path; the fused
scaled_dot_product_attention path is run too and its difference printed. Also writes
tests/data/coatnet_golden.md: the layer facts a C++ implementation needs (asserted against the constructed
timm modules by check_facts(), and checked numerically by reimplement(), a forward written from the facts
and the state_dict alone that must match timm to ~1e-15 in float64), parameter names and shapes, output
shapes, per-stage statistics. Output is byte-for-byte reproducible with the same torch / timm versions.
"""
import copy
import dataclasses
import json
import math
import os

import torch
import timm
from safetensors.torch import save_file
from timm.layers import LayerNorm2d, RelPosBias
from timm.layers.norm_act import BatchNormAct2d
from timm.layers.squeeze_excite import SEModule
from timm.models.maxxvit import (Attention2d, MaxxVit, MaxxVitCfg, MbConvBlock, TransformerBlock2d,
                                 _rw_coat_cfg)

SEED = 20261123
IMG_SIZE = (64, 96)
NUM_CLASSES = 10
HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "tests", "data"))


def with_dim_head(cfg, dim_head):
    return dataclasses.replace(cfg, transformer_cfg=dataclasses.replace(cfg.transformer_cfg, dim_head=dim_head))


def configs():
    rw = MaxxVitCfg(embed_dim=(16, 24, 32, 48), depths=(2, 2, 2, 2), stem_width=(8, 16),
                    **_rw_coat_cfg(conv_attn_early=True, transformer_shortcut_bias=False))
    paper = MaxxVitCfg(embed_dim=(16, 24, 32, 48), depths=(2, 2, 2, 2), stem_width=16, head_hidden_size=48)
    return [("rw_tiny", with_dim_head(rw, 8)), ("paper_tiny", with_dim_head(paper, 8))]


def randomize(model, gen):
    """Every floating parameter / buffer gets a seeded random value (see the module docstring)."""
    done = set()

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64) * std)

    def uniform(t, lo, hi):
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen, dtype=torch.float64))

    with torch.no_grad():
        for mname, m in model.named_modules():
            p = mname + "." if mname else ""
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()  # in_ch / groups * kh * kw (or in_features)
                normal(m.weight, 1.0 / math.sqrt(fan_in))
                done.add(p + "weight")
                if m.bias is not None:
                    normal(m.bias, 0.1)
                    done.add(p + "bias")
            elif isinstance(m, torch.nn.BatchNorm2d):
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.1)
                normal(m.running_mean, 0.1)
                uniform(m.running_var, 0.5, 1.5)
                done.update(p + n for n in ("weight", "bias", "running_mean", "running_var"))
            elif isinstance(m, torch.nn.LayerNorm):
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.1)
                done.update(p + n for n in ("weight", "bias"))
            elif isinstance(m, RelPosBias):
                normal(m.relative_position_bias_table, 0.5)
                done.add(p + "relative_position_bias_table")
    missed = [k for k, v in model.state_dict().items() if v.is_floating_point() and k not in done]
    assert not missed, missed


def set_fused(model, fused):
    n = 0
    for m in model.modules():
        if isinstance(m, Attention2d):
            m.fused_attn = fused
            n += 1
    assert n > 0


def run(model, x):
    """stem, stages.0..3, features, logits; checks the pieces compose to model(x)."""
    out = {}
    with torch.no_grad():
        h = model.stem(x)
        out["stem"] = h
        for i, stage in enumerate(model.stages):
            h = stage(h)
            out["stages.%d" % i] = h
        out["features"] = model.norm(h)
        out["logits"] = model.forward_head(out["features"])
        assert torch.equal(out["logits"], model(x))
    return out


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def check_facts(name, model, cfg):
    """Assert, against the built timm modules, the facts written into coatnet_golden.md."""
    conv, tr = cfg.conv_cfg, cfg.transformer_cfg
    rw = name == "rw_tiny"
    # stem: conv3x3 s2 p1 (no bias) -> BN+act -> conv3x3 s1 p1 (no bias), no norm after conv2
    st = model.stem
    assert st.conv1.stride == (2, 2) and st.conv1.padding == (1, 1) and st.conv1.bias is None
    assert st.conv2.stride == (1, 1) and st.conv2.padding == (1, 1) and st.conv2.bias is None
    assert isinstance(st.norm1, BatchNormAct2d) and st.norm1.eps == 1e-5
    assert type(st.norm1.act).__name__ == ("SiLU" if rw else "GELU")
    for si, stage in enumerate(model.stages):
        for bi, b in enumerate(stage.blocks):
            stride = 2 if bi == 0 else 1
            if isinstance(b, MbConvBlock):
                assert si < 2
                in_chs, out_chs = b.pre_norm.num_features, b.conv3_1x1.out_channels
                mid = (in_chs if rw else out_chs) * 4
                assert b.conv1_1x1.out_channels == mid and b.conv2_kxk.groups == mid
                se = b.se_early if rw else b.se
                assert isinstance(se, SEModule) and (b.se is None if rw else b.se_early is None)
                assert se.fc1.out_channels == int(0.25 * (mid if rw else out_chs))
                assert se.fc1.bias is not None and se.fc2.bias is not None
                assert type(se.act).__name__ == ("ReLU" if rw else "SiLU")
                assert type(se.gate).__name__ == "Sigmoid"
                assert type(b.pre_norm.act).__name__ == ("SiLU" if rw else "Identity")
                for n in (b.pre_norm, b.norm1, b.norm2):
                    assert isinstance(n, BatchNormAct2d) and n.eps == 1e-5
                for n in (b.norm1, b.norm2):
                    assert type(n.act).__name__ == ("SiLU" if rw else "GELU")
                assert b.conv1_1x1.bias is None and b.conv2_kxk.bias is None
                assert (b.conv3_1x1.bias is None) == rw
                assert b.conv2_kxk.padding == (1, 1)
                if rw:
                    assert b.conv2_kxk.stride == (1, 1)
                    assert isinstance(b.down, torch.nn.Identity) == (stride == 1)
                else:
                    assert b.conv2_kxk.stride == (stride, stride) and isinstance(b.down, torch.nn.Identity)
                if stride == 2:
                    assert isinstance(b.shortcut.pool, torch.nn.AvgPool2d)
                    assert b.shortcut.pool.kernel_size == 2 and b.shortcut.pool.stride == 2
                    if in_chs == out_chs:
                        assert isinstance(b.shortcut.expand, torch.nn.Identity)
                    else:
                        assert (b.shortcut.expand.bias is None) == rw
                else:
                    assert isinstance(b.shortcut, torch.nn.Identity)
            else:
                assert isinstance(b, TransformerBlock2d) and si >= 2
                a = b.attn
                in_chs, out_chs = a.qkv.in_channels, a.proj.out_channels
                dim_attn = in_chs if rw else out_chs
                assert a.num_heads == dim_attn // 8 and a.dim_head == 8 and a.head_first
                assert a.qkv.out_channels == 3 * dim_attn and a.proj.in_channels == dim_attn
                assert a.qkv.bias is not None and a.proj.bias is not None
                H, W = IMG_SIZE[0] // 2 ** (si + 2), IMG_SIZE[1] // 2 ** (si + 2)
                assert tuple(a.rel_pos.window_size) == (H, W)
                assert a.rel_pos.relative_position_bias_table.shape == ((2 * H - 1) * (2 * W - 1), a.num_heads)
                norm1 = b.norm1.norm if stride == 2 else b.norm1
                for n in (norm1, b.norm2):
                    assert isinstance(n, LayerNorm2d) and n.eps == 1e-6
                assert type(b.mlp.act).__name__ == "GELU" and b.mlp.act.forward(torch.tensor([1.0])).item() == \
                    torch.nn.functional.gelu(torch.tensor([1.0]), approximate="none").item()
                assert b.mlp.fc1.out_channels == 4 * out_chs
                assert isinstance(b.ls1, torch.nn.Identity) and isinstance(b.ls2, torch.nn.Identity)
                if stride == 2:
                    assert isinstance(b.norm1.down.pool, torch.nn.AvgPool2d)
                    assert isinstance(b.norm1.down.expand, torch.nn.Identity)
                    assert isinstance(b.shortcut.pool, torch.nn.AvgPool2d)
                    assert (b.shortcut.expand.bias is None) == rw
    if rw:
        assert isinstance(model.norm, LayerNorm2d) and model.norm.eps == 1e-6
        assert type(model.head).__name__ == "ClassifierHead"
    else:
        assert isinstance(model.norm, torch.nn.Identity)
        h = model.head
        assert type(h).__name__ == "NormMlpClassifierHead"
        assert isinstance(h.norm, LayerNorm2d) and h.norm.eps == 1e-6
        assert type(h.pre_logits.act).__name__ == "Tanh"


def reimplement(name, sd, x):
    """Independent float64 forward from the state_dict alone, written from the facts in coatnet_golden.md
    (not from timm modules); must match timm's output, so the documented facts are checked numerically."""
    import torch.nn.functional as F
    rw = name == "rw_tiny"
    w = {k: v.double() for k, v in sd.items() if v.is_floating_point()}
    act = F.silu if rw else F.gelu

    def bn(t, p, a=None):
        y = (t - w[p + ".running_mean"][:, None, None]) / torch.sqrt(w[p + ".running_var"][:, None, None] + 1e-5)
        y = y * w[p + ".weight"][:, None, None] + w[p + ".bias"][:, None, None]
        return a(y) if a else y

    def ln2d(t, p):
        mu = t.mean(1, keepdim=True)
        var = ((t - mu) ** 2).mean(1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-6) * w[p + ".weight"][:, None, None] + w[p + ".bias"][:, None, None]

    def conv(t, p, stride=1, pad=0, groups=1):
        return F.conv2d(t, w[p + ".weight"], w.get(p + ".bias"), stride, pad, 1, groups)

    def pool(t):
        return F.avg_pool2d(t, 2, 2)

    h = conv(x, "stem.conv1", 2, 1)
    h = bn(h, "stem.norm1", act)
    h = conv(h, "stem.conv2", 1, 1)
    outs = {"stem": h}
    for si in range(4):
        for bi in range(2):
            p = "stages.%d.blocks.%d" % (si, bi)
            stride = 2 if bi == 0 else 1
            if si < 2:  # MbConv
                sc = h
                if stride == 2:
                    sc = pool(h)
                    if p + ".shortcut.expand.weight" in w:
                        sc = conv(sc, p + ".shortcut.expand")
                y = bn(h, p + ".pre_norm", act if rw else None)
                if rw and stride == 2:
                    y = pool(y)
                y = bn(conv(y, p + ".conv1_1x1"), p + ".norm1", act)
                mid = y.shape[1]
                y = conv(y, p + ".conv2_kxk", 1 if rw else stride, 1, mid)
                se_name = p + (".se_early" if rw else ".se")

                def se(t):
                    s = conv(t.mean((2, 3), keepdim=True), se_name + ".fc1")
                    s = F.relu(s) if rw else F.silu(s)
                    return t * torch.sigmoid(conv(s, se_name + ".fc2"))
                if rw:
                    y = bn(se(y), p + ".norm2", act)
                else:
                    y = se(bn(y, p + ".norm2", act))
                h = conv(y, p + ".conv3_1x1") + sc
            else:  # transformer
                if stride == 2:
                    sc = conv(pool(h), p + ".shortcut.expand")
                    y = pool(ln2d(h, p + ".norm1.norm"))
                else:
                    sc = h
                    y = ln2d(h, p + ".norm1")
                B, C, H, W = y.shape
                L = H * W
                qkv = conv(y, p + ".attn.qkv")
                heads = qkv.shape[1] // 24
                qkv = qkv.reshape(B, heads, 3, 8, L)  # [head][q|k|v][dim_head]
                q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # B, heads, 8, L
                table = w[p + ".attn.rel_pos.relative_position_bias_table"]  # [(2H-1)(2W-1), heads]
                yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
                yy, xx = yy.flatten(), xx.flatten()
                idx = (yy[:, None] - yy[None, :] + H - 1) * (2 * W - 1) + (xx[:, None] - xx[None, :] + W - 1)
                bias = table[idx].permute(2, 0, 1)  # heads, Lq, Lk
                s = torch.einsum("bhdi,bhdj->bhij", q, k) * 8 ** -0.5 + bias
                a = torch.softmax(s, -1)
                o = torch.einsum("bhij,bhdj->bhdi", a, v).reshape(B, heads * 8, H, W)
                h = sc + conv(o, p + ".attn.proj")
                m = conv(F.gelu(conv(ln2d(h, p + ".norm2"), p + ".mlp.fc1")), p + ".mlp.fc2")
                h = h + m
        outs["stages.%d" % si] = h
    if rw:
        f = ln2d(h, "norm")
        outs["features"] = f
        outs["logits"] = F.linear(f.mean((2, 3)), w["head.fc.weight"], w["head.fc.bias"])
    else:
        outs["features"] = h
        g = ln2d(h.mean((2, 3), keepdim=True), "head.norm").flatten(1)
        g = torch.tanh(F.linear(g, w["head.pre_logits.fc.weight"], w["head.pre_logits.fc.bias"]))
        outs["logits"] = F.linear(g, w["head.fc.weight"], w["head.fc.bias"])
    return outs


FACTS_COMMON = """\
Common to both (read from timm/models/maxxvit.py and timm/layers, asserted by check_facts()):

- Spatial: input 64x96 -> stem 32x48 -> stages 16x24, 8x12, 4x6, 2x3. Stage i, block 0 has stride 2,
  the other blocks stride 1. Stages 0,1 are MbConv ('C'), stages 2,3 transformer ('T') blocks.
- Stem: conv1 3x3 stride 2 pad 1 (no bias) -> BatchNorm(eps 1e-5) + act -> conv2 3x3 stride 1 pad 1 (no
  bias). The stem output is the raw conv2 output (no norm/act after it).
- BatchNorm eps 1e-5 everywhere (eval: running stats). LayerNorm2d eps 1e-6 (LayerNorm over C per pixel).
- GELU is the exact erf GELU (F.gelu, approximate='none'). SE gate is sigmoid; SE squeeze is the spatial mean;
  SE fc1/fc2 are 1x1 convs with bias; out = x * sigmoid(fc2(act(fc1(mean(x))))).
- MbConv forward: shortcut = shortcut(x); x = pre_norm(x); x = down(x); x = norm1(conv1_1x1(x));
  x = conv2_kxk(x) (depthwise 3x3 pad 1); [se_early]; x = norm2(x); [se]; x = conv3_1x1(x); x + shortcut.
  conv1_1x1 and conv2_kxk have no bias. Stride-2 shortcut = Downsample2d: AvgPool2d(2, 2) then 1x1 conv
  'expand' if in != out channels. NOTE: here stage 0 block 0 has in == out == 16, so its shortcut is the
  2x2 avg pool only (no weights), unlike the full-size models (64 -> 96).
- Transformer block (TransformerBlock2d, NCHW): stride 2: shortcut = AvgPool2d(2,2) + 1x1 conv in->out;
  norm1 = LayerNorm2d(in) then AvgPool2d(2,2) (names norm1.norm.*, no weights in norm1.down);
  stride 1: shortcut identity, norm1 = LayerNorm2d. x = shortcut(x) + attn(norm1(x));
  x = x + mlp(norm2(x)); mlp = 1x1 conv out->4*out (bias) -> GELU -> 1x1 conv 4*out->out (bias).
  No layer scale (init_values None), no drop path in eval.
- Attention2d over the whole feature map (L = H*W; 24 tokens at stage 2, 6 at stage 3); dim_head 8,
  scale 8^-0.5. qkv = 1x1 conv dim -> 3*dim_attn with bias; head_first: qkv channels ordered
  [head][q|k|v][dim_head], i.e. view(B, heads, 3*dim_head, L).chunk(3) (channel h*24 + 0..7 = q of head h,
  +8..15 = k, +16..23 = v). attn = softmax(scale * q^T k + bias) (per head, [L, L], softmax over keys);
  out = v attn^T, channels ordered [head][dim_head]; proj = 1x1 conv dim_attn -> dim_out with bias.
- Relative position bias (RelPosBias): table relative_position_bias_table [(2H-1)(2W-1), heads] (note:
  rows = offsets, columns = heads). bias[h, i, j] = table[idx(i, j), h], with tokens i = (yi, xi),
  j = (yj, xj) row-major (i = yi*W + xi), idx = (yi - yj + H - 1) * (2W - 1) + (xi - xj + W - 1)
  (query minus key, Swin/timm convention). Added before the softmax. relative_position_index is a
  non-persistent buffer (not in the state_dict). Stage 2 table: 7*11 = 77 rows, stage 3: 3*5 = 15 rows.
- Fused (scaled_dot_product_attention with attn_mask = bias) and explicit paths compute the same thing;
  Attention2d.fused_attn is fixed at construction (timm.layers.use_fused_attn()); this script flips the
  attribute on the built modules.
"""

FACTS = {
    "rw_tiny": """\
rw_tiny (coatnet_0_rw layout, _rw_coat_cfg(conv_attn_early=True, transformer_shortcut_bias=False)):

- Conv act SiLU (stem norm1, MbConv pre_norm/norm1/norm2). stride_mode 'pool': the stride-2 MbConv block
  downsamples with AvgPool2d(2,2) ('down') after pre_norm and before conv1_1x1; conv2_kxk always stride 1.
- pre_norm = BatchNorm + SiLU (pre_norm_act=True).
- mid channels = make_divisible(in_chs * 4) (expand_output=False: from the INPUT channels); here 64, 64
  (stage 0), 64, 96 (stage 1).
- SE before norm2 (se_early, attn_early=True): conv2_kxk -> se_early -> norm2 (BN+SiLU).
  rd = int(0.25 * mid_chs) (16, 16, 16, 24); SE act ReLU.
- conv3_1x1 and the MbConv shortcut expand conv have NO bias (output_bias=False).
- Transformer: expand_first=False: dim_attn = in_chs, heads = in_chs / 8 (stage 2: 3, 4; stage 3: 4, 6);
  qkv in->3*in, proj in->out (the projection does the channel expansion). Shortcut expand conv has NO
  bias (transformer_shortcut_bias=False); qkv/proj/mlp have biases.
- Final: model.norm = LayerNorm2d(48, eps 1e-6) on the NCHW map ("features" = after it), then
  ClassifierHead: global average pool -> Linear(48, 10) (head.fc).
""",
    "paper_tiny": """\
paper_tiny (coatnet_0 layout: MaxxVitConvCfg / MaxxVitTransformerCfg defaults, head_hidden_size):

- Conv act GELU (exact) in stem norm1 and MbConv norm1/norm2. stride_mode 'dw': the stride-2 MbConv block
  strides in the depthwise conv2_kxk (3x3, stride 2, symmetric pad 1); no 'down' pool.
- pre_norm = BatchNorm only, no activation (pre_norm_act=False).
- mid channels = make_divisible(out_chs * 4) (expand_output=True: from the OUTPUT channels); here 64, 64
  (stage 0), 96, 96 (stage 1).
- SE after norm2 (attn_early=False): conv2_kxk -> norm2 (BN+GELU) -> se. rd = int(0.25 * out_chs)
  (4, 4, 6, 6); SE act SiLU.
- conv3_1x1 and the MbConv shortcut expand conv HAVE biases (output_bias=True).
- Transformer: expand_first=True: dim_attn = out_chs, heads = out_chs / 8 (stage 2: 4, 4; stage 3: 6, 6);
  qkv in->3*out, proj out->out. Shortcut expand conv has a bias (shortcut_bias=True).
- Final: model.norm = Identity ("features" = stages.3 output), then NormMlpClassifierHead: global average
  pool -> LayerNorm2d(48, eps 1e-6) on [B,48,1,1] (head.norm) -> flatten -> Linear(48, 48)
  (head.pre_logits.fc) -> tanh -> Linear(48, 10) (head.fc).
""",
}


def param_listing(sd):
    """stem/norm/head names, plus every tensor of the first block of each stage type."""
    keep = []
    for k, v in sd.items():
        if (k.startswith(("stem.", "norm.", "head.")) or k.startswith("stages.0.blocks.0.")
                or k.startswith("stages.1.blocks.1.") or k.startswith("stages.2.blocks.0.")
                or k.startswith("stages.2.blocks.1.")):
            keep.append("  %-55s %-6s %s" % (k, str(v.dtype).replace("torch.", ""), list(v.shape)))
    return keep


def main():
    os.makedirs(DATA, exist_ok=True)
    md = ["# CoAtNet golden data (tests/data/coatnet_*.safetensors)", "",
          "Made by tools/coatnet_golden.py (offline, never run by the build) with torch %s, timm %s, seed %d."
          % (torch.__version__.split("+")[0], timm.__version__, SEED), "",
          "Per config NAME: `coatnet_NAME.safetensors` = `model.state_dict()` (timm names; float32 plus int64 "
          "`num_batches_tracked`, which a loader must ignore), `coatnet_NAME_io.safetensors` = float32 "
          "`input` [2,3,64,96], `stem`, `stages.0`..`stages.3`, `features`, `logits` (float64 reference "
          "computed from the float32 weights/input, rounded to float32) and `logits_f32` (torch float32). "
          "All weights are random (conv/linear N(0, 1/fan_in), biases N(0, 0.1), norm weights U(0.5, 1.5), "
          "norm biases and BN running means N(0, 0.1), BN running vars U(0.5, 1.5), relative position "
          "tables N(0, 0.5)). Model: `MaxxVit(cfg, img_size=(64, 96), num_classes=10).eval()`. Both files carry "
          "one metadata key, `timm_config`: JSON `{\"MaxxVitCfg\": cfg as a dict, \"MaxxVit\": {img_size, "
          "num_classes}, \"timm\", \"torch\", \"seed\"}`.", "",
          "The facts below are asserted against the built timm modules (check_facts) and checked numerically: "
          "reimplement() in the tool is a plain functional forward written from these facts and the "
          "state_dict alone, and it matches timm to ~1e-15 (float64) for both configs.", "",
          "```", FACTS_COMMON, "```", ""]
    for ci, (name, cfg) in enumerate(configs()):
        torch.manual_seed(SEED + ci)
        model = MaxxVit(cfg, img_size=IMG_SIZE, num_classes=NUM_CLASSES).eval()
        gen = torch.Generator().manual_seed(SEED + 100 + ci)
        randomize(model, gen)
        check_facts(name, model, cfg)
        x32 = torch.randn(2, 3, *IMG_SIZE, generator=gen, dtype=torch.float32)

        sd = model.state_dict()
        weights = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
        nparams = sum(p.numel() for p in model.parameters())

        # float64 reference from the float32 values cast up
        m64 = copy.deepcopy(model).double()
        m64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in weights.items()})
        set_fused(m64, False)
        ref = run(m64, x32.double())
        set_fused(m64, True)
        fused = run(m64, x32.double())
        fused_diff = max((ref[k] - fused[k]).abs().max().item() for k in ref)
        mine = reimplement(name, weights, x32.double())
        mine_diff = max(max_rel(mine[k], ref[k]) for k in ref)
        assert mine_diff < 1e-12, mine_diff

        m32 = copy.deepcopy(model).float()
        m32.load_state_dict(weights)
        set_fused(m32, False)
        out32 = run(m32, x32)
        set_fused(m32, True)
        out32_fused = run(m32, x32)
        rel32 = {k: max_rel(out32[k], ref[k]) for k in ref}
        rel32_fused = max_rel(out32_fused["logits"], ref["logits"])

        io = {"input": x32.contiguous()}
        io.update({k: v.float().contiguous() for k, v in ref.items()})
        io["logits_f32"] = out32["logits"].contiguous()

        # one metadata key only: safetensors writes the metadata map in hash order, and one key keeps the
        # files byte-for-byte reproducible
        cfg_json = json.dumps({"MaxxVitCfg": dataclasses.asdict(cfg),
                               "MaxxVit": {"img_size": list(IMG_SIZE), "num_classes": NUM_CLASSES},
                               "timm": timm.__version__, "torch": torch.__version__.split("+")[0],
                               "seed": SEED})
        wpath = os.path.join(DATA, "coatnet_%s.safetensors" % name)
        iopath = os.path.join(DATA, "coatnet_%s_io.safetensors" % name)
        save_file(weights, wpath, metadata={"timm_config": cfg_json})
        save_file(io, iopath, metadata={"timm_config": cfg_json})
        for path in (wpath, iopath):
            os.chmod(path, 0o644)

        lines = ["## %s" % name, "", "```", FACTS[name].rstrip(), "", "timm_config = " + repr(cfg), "",
                 "total parameters: %d (state_dict tensors: %d, of which %d num_batches_tracked)"
                 % (nparams, len(sd), sum(k.endswith("num_batches_tracked") for k in sd)), "",
                 "output shapes and float64 statistics (mean, std, max |x|):"]
        for k, v in ref.items():
            lines.append("  %-9s %-18s mean %+.4f  std %.4f  max|x| %.4f"
                         % (k, list(v.shape), v.mean().item(), v.std().item(), v.abs().max().item()))
        lines += ["",
                  "fused vs explicit attention, float64, max |diff| over all outputs: %.3g" % fused_diff,
                  "independent functional re-implementation of these facts (reimplement()) vs timm, float64,"
                  " max|diff| / max|ref|: %.2g" % mine_diff,
                  "torch float32 vs float64 reference, max|diff| / max|ref| per output: "
                  + ", ".join("%s %.2g" % (k, r) for k, r in rel32.items()),
                  "  (float32 with fused attention, logits: %.2g)" % rel32_fused, "",
                  "state_dict (stem, final norm / head, first block of each stage type and a stride-1 block"
                  " of each type):"]
        lines += param_listing(sd)
        lines += ["```", ""]
        print("\n".join(lines))
        print("wrote", wpath, os.path.getsize(wpath), "bytes;", iopath, os.path.getsize(iopath), "bytes\n")
        md += lines

    mdpath = os.path.join(DATA, "coatnet_golden.md")
    with open(mdpath, "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    print("wrote", mdpath)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Full-size conformance check of attnkit's CoAtNet presets against timm (offline; never run by the build).

Builds timm's coatnet_0_rw_224 and coatnet_0_224 with random weights (timm's init, then random
batch-norm statistics, norm scales, biases and relative tables so every parameter matters), saves
each state_dict as <dir>/<name>.safetensors (~100 MB each: not committed) and a batch of 2 random
224 x 224 images with timm's float64 logits as <dir>/<name>_io.safetensors. Then run
    coatnet_fullsize_check <dir>        (built from tools/coatnet_fullsize_check.cpp)
which loads both checkpoints into attnkit::coatnet::network<float> and prints
max |logits - timm| / max |timm|.

Usage: python3 tools/coatnet_fullsize_check.py /tmp/coatnet_full   (needs torch, timm, safetensors)
"""
import sys

import torch
import timm
from safetensors.torch import save_file


def main(out_dir):
    torch.manual_seed(0)
    for name in ["coatnet_0_rw_224", "coatnet_0_224"]:
        m = timm.create_model(name).eval()
        with torch.no_grad():
            for k, v in m.state_dict().items():
                if not v.dtype.is_floating_point:
                    continue
                if "running_var" in k:
                    v.uniform_(0.5, 1.5)
                elif "running_mean" in k:
                    v.normal_(0, 0.1)
                elif "relative_position_bias_table" in k:
                    v.normal_(0, 0.5)
                elif v.dim() == 1 and "norm" in k and k.endswith("weight"):
                    v.uniform_(0.5, 1.5)
                elif v.dim() == 1:
                    v.normal_(0, 0.1)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{out_dir}/{name}.safetensors")
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            y = m.double()(x.double())
        save_file({"input": x, "logits": y}, f"{out_dir}/{name}_io.safetensors")
        print(name, "logits[0, :5] =", [round(float(t), 6) for t in y[0, :5]])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])

"""torch_sdpa_bench.py: time PyTorch's scaled_dot_product_attention (fp32, CPU) for comparison.

Times torch.nn.functional.scaled_dot_product_attention forward, backward and forward+backward on
the shapes attnkit's benchmarks use, so the README can set attnkit's numbers beside PyTorch's.

Needs PyTorch >= 2.0 (SDPA; enable_gqa from 2.5). Debian's python3-torch is 1.13, so install a
recent torch into a throw-away venv, leaving the system Python alone:
  /usr/bin/python3 -m venv /tmp/sdpa-venv
  /tmp/sdpa-venv/bin/pip install torch numpy
(numpy only silences torch's warning. PyPI's Linux wheel is the CUDA build, about 5 GB with its
nvidia-* dependencies; it runs on the CPU as is. Where download.pytorch.org can be reached,
`pip install torch --index-url https://download.pytorch.org/whl/cpu` is the far smaller CPU
build.)

Usage:
  /tmp/sdpa-venv/bin/python tools/torch_sdpa_bench.py [--threads 1] [--repetitions 5] \\
      [--shapes L=1024,d=64,H=8,causal=0 L=2048,d=128,H=32,Hkv=8,causal=1 ...] \\
      [--quick] [--out results.json]

Shape fields: L (sequence length), d (head dimension), H (query heads, default 8), Hkv (key/value
heads, default H; H % Hkv == 0), causal (0 or 1, default 0). Batch is 1. q, k, v are uniform in
[-1, 1) with requires_grad; dout is uniform in [-1, 1) too.

Timing (time.perf_counter, the minimum over --repetitions, after one untimed warm-up fwd+bwd per
shape): fwd = one SDPA call (is_causal); bwd = out.backward(dout) alone, run on the output of the
fwd just timed (whose time is not part of bwd); fwdbwd = SDPA and backward together. Gradients
are cleared outside the timed regions.

GQA (Hkv < H): torch's own enable_gqa=True where the installed torch has it (>= 2.5; on CPU, torch
2.15's flash kernel then reads the shared k/v heads directly), else k and v are expanded to H
heads with repeat_interleave outside the timed region. The JSON's "gqa" field says which.

FLOPs for GFLOP/s: fwd 4*L*L*d*H, bwd 10*L*L*d*H (fwdbwd 14*L*L*d*H), halved when causal.
"""
import argparse
import inspect
import json
import platform
import time

import torch
import torch.nn.functional as F

SDPA = F.scaled_dot_product_attention


def has_native_gqa():
    """Whether this torch's SDPA takes enable_gqa (native grouped-query attention, torch >= 2.5)."""
    try:
        SDPA(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1),
             enable_gqa=True)
        return True
    except TypeError:
        return False


HAS_GQA = has_native_gqa()

DEFAULT_SHAPES = ([f"L={L},d={d},H=8,causal={c}"
                   for L in (512, 1024, 2048, 4096) for d in (64, 128) for c in (0, 1)]
                  + ["L=2048,d=128,H=32,Hkv=8,causal=1", "L=2048,d=128,H=32,Hkv=8,causal=0"])
QUICK_SHAPES = ["L=512,d=64,H=8,causal=0", "L=512,d=64,H=8,causal=1",
                "L=1024,d=64,H=8,causal=0", "L=1024,d=64,H=8,causal=1",
                "L=1024,d=128,H=32,Hkv=8,causal=1"]


def parse_shape(text):
    """'L=1024,d=64,H=8,Hkv=2,causal=1' -> dict with keys L, d, H, Hkv, causal."""
    fields = dict(item.split("=", 1) for item in text.split(",") if item)
    unknown = set(fields) - {"L", "d", "H", "Hkv", "causal"}
    if unknown or "L" not in fields or "d" not in fields:
        raise SystemExit(f"bad shape {text!r}: need L and d; known fields L, d, H, Hkv, causal")
    s = {"L": int(fields["L"]), "d": int(fields["d"]), "H": int(fields.get("H", 8))}
    s["Hkv"] = int(fields.get("Hkv", s["H"]))
    s["causal"] = int(fields.get("causal", 0))
    if s["H"] % s["Hkv"] or s["causal"] not in (0, 1):
        raise SystemExit(f"bad shape {text!r}: H % Hkv must be 0 and causal 0 or 1")
    return s


def cpu_model():
    """The 'model name' of /proc/cpuinfo, with family/model (a VM may show only 'AMD EPYC')."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    return (f"{info.get('model name', 'unknown')} "
            f"(family {info.get('cpu family', '?')}, model {info.get('model', '?')})")


def uniform(*shape, grad=False):
    """A tensor uniform in [-1, 1), optionally a leaf requiring grad."""
    return (torch.rand(*shape) * 2 - 1).requires_grad_(grad)


def bench_shape(s, reps):
    """Times one shape; returns the record (times in ms, rates in GFLOP/s)."""
    L, d, H, Hkv, causal = s["L"], s["d"], s["H"], s["Hkv"], bool(s["causal"])
    q = uniform(1, H, L, d, grad=True)
    k = uniform(1, Hkv, L, d, grad=True)
    v = uniform(1, Hkv, L, d, grad=True)
    dout = uniform(1, H, L, d)
    kwargs = {"is_causal": causal}
    if Hkv != H:
        if HAS_GQA:
            kwargs["enable_gqa"] = True
        else:  # expand once, untimed; the expanded tensors are the leaves whose grads we take
            k = k.detach().repeat_interleave(H // Hkv, dim=1).requires_grad_(True)
            v = v.detach().repeat_interleave(H // Hkv, dim=1).requires_grad_(True)

    def clear_grads():
        q.grad = k.grad = v.grad = None

    SDPA(q, k, v, **kwargs).backward(dout)  # warm-up: allocations, kernel selection
    clear_grads()
    fwd = bwd = fwdbwd = float("inf")
    for _ in range(reps):  # fwd and bwd, each timed alone
        t0 = time.perf_counter()
        out = SDPA(q, k, v, **kwargs)
        t1 = time.perf_counter()
        out.backward(dout)
        t2 = time.perf_counter()
        fwd, bwd = min(fwd, t1 - t0), min(bwd, t2 - t1)
        del out
        clear_grads()
    for _ in range(reps):  # fwd+bwd as one
        t0 = time.perf_counter()
        SDPA(q, k, v, **kwargs).backward(dout)
        t1 = time.perf_counter()
        fwdbwd = min(fwdbwd, t1 - t0)
        clear_grads()

    unit = L * L * d * H * (0.5 if causal else 1.0)  # flops per "1" of the 4 + 10 count
    return {**s, "threads": torch.get_num_threads(),
            "fwd_ms": fwd * 1e3, "bwd_ms": bwd * 1e3, "fwdbwd_ms": fwdbwd * 1e3,
            "fwd_gflops": 4 * unit / fwd / 1e9, "bwd_gflops": 10 * unit / bwd / 1e9,
            "fwdbwd_gflops": 14 * unit / fwdbwd / 1e9}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--repetitions", type=int, default=5,
                    help="timed runs per measurement; the minimum is reported (default 5)")
    ap.add_argument("--shapes", nargs="+", metavar="SHAPE",
                    help="e.g. L=1024,d=64,H=8,causal=0 L=2048,d=128,H=32,Hkv=8,causal=1")
    ap.add_argument("--quick", action="store_true", help="a small subset of the default shapes")
    ap.add_argument("--out", help="write the results as JSON to this path")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [parse_shape(t) for t in
              (args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES))]
    machine = {"torch": torch.__version__, "python": platform.python_version(),
               "cpu": cpu_model(), "threads": torch.get_num_threads(),
               "repetitions": args.repetitions, "dtype": "float32", "batch": 1,
               "gqa": "enable_gqa" if HAS_GQA else "repeat_interleave (untimed)",
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"# torch {machine['torch']}, {machine['cpu']}, threads {machine['threads']}, "
          f"min of {args.repetitions}, GQA via {machine['gqa']}")
    header = (f"{'L':>6} {'d':>4} {'H':>3} {'Hkv':>3} {'causal':>6} "
              f"{'fwd ms':>10} {'bwd ms':>10} {'fwd+bwd ms':>11} {'GFLOP/s':>8}")
    print(header)
    print("-" * len(header))
    records = []
    for s in shapes:
        r = bench_shape(s, args.repetitions)
        records.append(r)
        print(f"{r['L']:>6} {r['d']:>4} {r['H']:>3} {r['Hkv']:>3} {r['causal']:>6} "
              f"{r['fwd_ms']:>10.2f} {r['bwd_ms']:>10.2f} {r['fwdbwd_ms']:>11.2f} "
              f"{r['fwdbwd_gflops']:>8.1f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "results": records}, f, indent=2)
            f.write("\n")
        print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()

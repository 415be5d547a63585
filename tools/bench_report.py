#!/usr/bin/python3
"""bench_report.py: results tables and SVG plots from bench_attention's Google Benchmark JSON.

Standard library only (no matplotlib): the plots are written as SVG by this script.

Usage:
  build/bench/bench/bench_attention --benchmark_out=run.json --benchmark_out_format=json [...]
  /usr/bin/python3 tools/bench_report.py run.json [more.json ...] --out docs/bench/zen4 \\
      [--cpu "AMD EPYC (Zen 4)"] [--compiler "g++ 12.2.0"] [--os "Debian 12"] \\
      [--threads 1,2] [--lengths 1024,16384] [--machine zen4] [--title TEXT] \\
      [--update-readme README.md] [--torch-sdpa sdpa_t1.json [--torch-sdpa sdpa_t2.json]]

Writes into --out:
  time_<family>_t<threads>.svg     time vs L, log-log, the operators beside exact attention,
                                   one panel per mask (bidirectional, causal)
  speedup_<family>_t<threads>.svg  exact attention's time / the operator's time vs L
  peak_<family>_t<threads>.svg     % of the measured FMA peak (counter pct_peak) vs L
  table.md                         every benchmark: time, speed-up, GFLOP/s, % of peak, sample;
                                   then the training tables with every row
  summary.md                       the machine's header lines, the compact table and the plots, as
                                   the README shows them (also printed on stdout), then the
                                   training tables (rows of --threads; exact: of --lengths)
With --update-readme, summary.md also replaces what lies between the lines
"<!-- results:<machine> -->" and "<!-- /results:<machine> -->" of that file (machine: --machine,
default the name of the --out directory).

Statistics: bench_attention reports the aggregates "min" (time) and "max" (rate counters) besides
Google Benchmark's mean/median/stddev/cv. Time = the "_min" aggregate (the minimum over the
repetitions); without aggregates (--benchmark_repetitions=1) the minimum of the iteration rows.
Rates (GFLOP/s, pct_peak, ...) = the "_max" aggregate, else the maximum of the iteration rows: the
rate of the fastest repetition. A benchmark present in several files takes the minimum time over
all of them. spread = median / min of the time (1.00 = no noise), when the median is known.

Training tables (when the JSON has train_* or relative_*_backward / _step benchmarks):
  "Training: exact attention": a row per (d, L, heads H or H/Hkv, mask, threads); forward
    (full_attention), forward with lse (train_forward), backward (train_backward), forward+backward
    (train_step), backward / forward, the backward's GFLOP/s and pct_peak; with --torch-sdpa FILE
    (tools/torch_sdpa_bench.py --out; may be repeated, the minimum over the files) PyTorch SDPA's
    forward+backward ("fwdbwd_ms") and its time / train_step's, same shape and threads only.
  "Training: relative attention": a row per (grid, d, heads, threads); exact attention's backward
    on the grid's shape (train_backward/.../grid:...), relative_pre and relative_post backward and
    their time / the exact backward's, the pre and post training steps (relative_*_step).
Training benchmarks are in table.md's main table too, not in the compact table nor the plots.

Benchmark names (bench/common.hpp attention_name and bench/bench_attention.cpp): '/'-separated,
operator tokens first, then key:value fields; Google Benchmark's suffixes (manual_time, real_time,
iterations:N, repeats:N, min_time:X) are dropped. Known families:
  full_attention/d:64/L:4096[/H:4[/Hkv:2]]/causal:0/threads:1          exact attention
  reference/d:64/L:1024/causal:0/threads:1                             vs exact, same fields
  favor/d:64/m:256/L:2048/causal:1/threads:1                           vs exact, same d, L, mask
  combiner/<plan>/d:64/L:1024/causal:0/threads:1                       vs exact, same d, L, mask
  lambda/<local|relative>/d:256/u:4[/r:23]/L:3136/threads:1            vs full_attention/d:<d/4>/L/H:4
  relative_pre|relative_post/d:32/grid:14x14/L:196/H:12/causal:0/threads:1   vs exact, same d, L, H
  train_forward|train_backward|train_step/d:64/L:4096[/H:32/Hkv:8]/causal:1/threads:1
                                                                       exact training table
  train_backward/d:32/grid:14x14/L:196/H:12/causal:0/threads:1         relative training table
  relative_pre_backward|relative_pre_step|relative_post_backward|relative_post_step/
      d:32/grid:14x14/L:196/H:12/causal:0/threads:1                    relative training table
  decode/d:128/Lq:1/Lk:32768/causal:0/threads:1                        exact decode
  favor_decode/d:64/m:256/Lq:1/Lk:4096/causal:1/threads:1              vs decode, same d, Lk
  coatnet/<preset>/image:224/batch:8/threads:1                         whole network, no baseline
  peak/threads:1                                                       FMA peak (header line)
Speed-up always compares the same thread count. Other names are skipped with a warning.
"""

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections import OrderedDict, defaultdict

# ------------------------------------------------------------------------------------------------
# Reading Google Benchmark JSON

GB_SUFFIX_TOKENS = ("manual_time", "real_time", "process_time")
GB_SUFFIX_KEYS = ("iterations", "repeats", "min_time", "min_warmup_time")
AGGREGATE_SUFFIXES = ("_mean", "_median", "_stddev", "_cv", "_min", "_max", "_BigO", "_RMS")
STANDARD_FIELDS = {
    "name", "family_index", "per_family_instance_index", "run_name", "run_type", "repetitions",
    "repetition_index", "threads", "iterations", "real_time", "cpu_time", "time_unit", "label",
    "aggregate_name", "aggregate_unit", "error_occurred", "error_message", "big_o",
    "cpu_coefficient", "real_coefficient", "rms", "skipped", "skip_message",
}
UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}

WARNINGS = []


MAX_PRINTED_WARNINGS = 60


def warn(msg):
    WARNINGS.append(msg)
    if len(WARNINGS) <= MAX_PRINTED_WARNINGS:
        print("bench_report: warning: " + msg, file=sys.stderr)
    elif len(WARNINGS) == MAX_PRINTED_WARNINGS + 1:
        print("bench_report: warning: more warnings follow, not printed", file=sys.stderr)


class Measurement:
    """Everything known about one benchmark (one run_name) across the input files."""

    def __init__(self, name):
        self.name = name
        self.time = None       # seconds, minimum
        self.median = None     # seconds, median (aggregate) if known
        self.it_times = []     # iteration rows' times, seconds
        self.rates = {}        # counter -> value of the fastest repetition ("max" aggregate)
        self.it_rates = defaultdict(list)
        self.label = ""
        self.error = None
        self.repetitions = 0
        self.source = ""

    def finish(self):
        # minimum over everything known: the files' "min" aggregates and their repetitions' rows
        if self.it_times:
            t = min(self.it_times)
            self.time = t if self.time is None else min(self.time, t)
        if self.median is None and len(self.it_times) >= 3:
            s = sorted(self.it_times)
            n = len(s)
            self.median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        for k, v in self.it_rates.items():
            if v:
                self.rates[k] = max(v + ([self.rates[k]] if k in self.rates else []))


def row_seconds(row):
    t = row.get("real_time")
    unit = row.get("time_unit", "ns")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or unit not in UNIT_SECONDS:
        return None
    if not math.isfinite(t) or t < 0:
        return None
    return float(t) * UNIT_SECONDS[unit]


def row_counters(row):
    return {k: float(v) for k, v in row.items()
            if k not in STANDARD_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def base_run_name(row):
    rn = row.get("run_name")
    if isinstance(rn, str) and rn:
        return rn
    name = str(row.get("name", ""))
    agg = row.get("aggregate_name")
    if row.get("run_type") == "aggregate" and agg and name.endswith("_" + str(agg)):
        return name[: -len(str(agg)) - 1]
    for s in AGGREGATE_SUFFIXES:
        if row.get("run_type") == "aggregate" and name.endswith(s):
            return name[: -len(s)]
    return name


def load_files(paths):
    """Returns (contexts, measurements): one context per readable file, measurements by name."""
    contexts = []
    meas = OrderedDict()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            warn("%s: cannot read Google Benchmark JSON (%s); file skipped" % (path, e))
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
            warn("%s: no 'benchmarks' list (is it --benchmark_out_format=json?); file skipped" % path)
            continue
        ctx = doc.get("context") if isinstance(doc.get("context"), dict) else {}
        ctx = dict(ctx)
        ctx["_path"] = path
        contexts.append(ctx)
        for row in doc["benchmarks"]:
            if not isinstance(row, dict) or "name" not in row:
                continue
            if row.get("aggregate_name") in ("BigO", "RMS"):
                continue  # complexity fits of a family (no L): not a measurement
            name = base_run_name(row)
            m = meas.get(name)
            if m is None:
                m = meas[name] = Measurement(name)
                m.source = path
            if row.get("error_occurred") or row.get("skipped"):
                m.error = str(row.get("error_message") or row.get("skip_message") or "error")
                continue
            rtype = row.get("run_type", "iteration")
            agg = row.get("aggregate_name")
            if rtype == "aggregate":
                t = row_seconds(row)
                if agg == "min" and t is not None:
                    m.time = t if m.time is None else min(m.time, t)
                    if row.get("label"):
                        m.label = str(row["label"])
                    m.repetitions += int(row.get("repetitions", 0) or 0)
                elif agg == "max":
                    for k, v in row_counters(row).items():
                        m.rates[k] = max(v, m.rates.get(k, v))
                elif agg == "median" and t is not None:
                    m.median = t if m.median is None else min(m.median, t)
            else:
                t = row_seconds(row)
                if t is not None:
                    m.it_times.append(t)
                for k, v in row_counters(row).items():
                    m.it_rates[k].append(v)
                if row.get("label") and not m.label:
                    m.label = str(row["label"])
    for m in meas.values():
        m.finish()
        if not m.repetitions:
            m.repetitions = len(m.it_times)
    return contexts, meas


def _json_int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def load_torch_sdpa(paths):
    """tools/torch_sdpa_bench.py --out files -> (sources, times): one dict per readable file (path,
    machine, records), times (d, L, L, H, Hkv, causal, threads) -> seconds of one forward+backward
    ("fwdbwd_ms"), the minimum over the files."""
    sources, times = [], {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            warn("%s: cannot read PyTorch SDPA JSON (%s); file skipped" % (path, e))
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            warn("%s: no 'results' list (is it tools/torch_sdpa_bench.py --out?); file skipped" % path)
            continue
        mach = doc.get("machine") if isinstance(doc.get("machine"), dict) else {}
        n = bad = 0
        for r in doc["results"]:
            if not isinstance(r, dict):
                bad += 1
                continue
            L, d = _json_int(r.get("L")), _json_int(r.get("d"))
            h = _json_int(r.get("H", 8))
            hkv = _json_int(r.get("Hkv", h))
            causal = _json_int(r.get("causal", 0))
            threads = _json_int(r.get("threads", mach.get("threads")))
            t = r.get("fwdbwd_ms")
            if (None in (L, d, h, hkv, causal, threads) or isinstance(t, bool) or
                    not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0):
                bad += 1
                continue
            key = (d, L, L, h, hkv, 1 if causal else 0, threads)
            times[key] = min(t * 1e-3, times.get(key, float("inf")))
            n += 1
        if bad:
            warn("%s: %d result(s) without integer L, d, H, Hkv, causal, threads or a positive "
                 "fwdbwd_ms: skipped" % (path, bad))
        sources.append(dict(path=path, machine=mach, records=n))
    return sources, times


# ------------------------------------------------------------------------------------------------
# Names -> fields

def parse_name(name):
    """'combiner/fixed/d:64/L:1024/causal:0/threads:1/manual_time' ->
    ('combiner/fixed', {'d': 64, 'L': 1024, 'causal': 0, 'threads': 1}); None if malformed."""
    tokens = [t for t in name.split("/") if t != ""]
    while tokens and (tokens[-1] in GB_SUFFIX_TOKENS or tokens[-1].split(":", 1)[0] in GB_SUFFIX_KEYS):
        tokens.pop()
    family, params = [], OrderedDict()
    for t in tokens:
        if ":" in t:
            k, v = t.split(":", 1)
            if not k or k in params:
                return None
            params[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
        else:
            if params:  # an operator token after the fields
                return None
            family.append(t)
    if not family:
        return None
    return "/".join(family), params


class Entry:
    """One benchmark, classified: what it is, where it goes in tables and plots."""

    def __init__(self, m, family, params):
        self.m = m
        self.family = family
        self.params = params
        self.kind = None       # exact reference favor combiner lambda relative decode favor_decode coatnet
                               # peak train relative_train
        self.group = None      # plot / table family
        self.key = None        # as a baseline
        self.baseline = None   # key of the exact benchmark it is compared with
        self.x = None          # L (or Lk, or batch for coatnet)
        self.causal = 0
        self.threads = None
        self.series = ""       # operator label without L, mask and threads
        self.plot_series = ""  # same, minus the fields that vary along a plot's x (lambda, relative)
        self.speedup = None
        self.exact = None
        self.order = 0         # first appearance of its series in the input
        self.table_group = None
        self.step = None       # training: forward_lse, backward or step (TRAIN_FAMILIES)
        self.op = None         # relative_train: exact, relative_pre or relative_post
        self.row = None        # training: its row in the training table (shape and threads)


GROUP_ORDER = ["full_attention", "train", "reference", "favor", "combiner", "lambda", "relative",
               "relative_train", "decode", "coatnet"]
GROUP_TITLE = {
    "full_attention": "exact attention (full_attention)",
    "train": "training: exact attention",
    "reference": "reference::attention vs exact",
    "favor": "FAVOR+ vs exact",
    "combiner": "Combiner vs exact",
    "lambda": "lambda vs exact 4-head attention",
    "relative": "CoAtNet relative attention vs exact",
    "relative_train": "training: relative attention",
    "decode": "decoding",
    "coatnet": "CoAtNet network",
}


# Training families (bench_attention.cpp register_training and "Relative attention's backward"):
# name -> (operator, step). train_* with a grid:<s>x<s> field is exact attention's backward on a
# relative-attention shape (the relative table's baseline); without it, the exact training sweep.
TRAIN_FAMILIES = OrderedDict([
    ("train_forward", ("exact", "forward_lse")),
    ("train_backward", ("exact", "backward")),
    ("train_step", ("exact", "step")),
    ("relative_pre_backward", ("relative_pre", "backward")),
    ("relative_pre_step", ("relative_pre", "step")),
    ("relative_post_backward", ("relative_post", "backward")),
    ("relative_post_step", ("relative_post", "step")),
])


def _fmt_fields(params, names):
    return " ".join("%s:%s" % (n, params[n]) for n in names if n in params)


def classify(m):
    """Entry for a Measurement, or None (with a warning) when the name is not understood."""
    parsed = parse_name(m.name)
    if parsed is None:
        warn("skipped %r: not of the form family/key:value/..." % m.name)
        return None
    family, p = parsed
    e = Entry(m, family, p)
    head = family.split("/")[0]
    rest = family.split("/")[1:]

    def need(*names):
        missing = [n for n in names if not isinstance(p.get(n), int)]
        if missing:
            warn("skipped %r: %s without integer field(s) %s" % (m.name, head, ", ".join(missing)))
            return False
        return True

    def lengths():
        if isinstance(p.get("L"), int):
            return p["L"], p["L"]
        if isinstance(p.get("Lq"), int) and isinstance(p.get("Lk"), int):
            return p["Lq"], p["Lk"]
        return None

    def exact_key(d, lq, lk, h, hkv, causal, threads):
        return ("full_attention", d, lq, lk, h, hkv, causal, threads)

    if "threads" not in p or not isinstance(p["threads"], int):
        warn("skipped %r: no threads:<n> field" % m.name)
        return None
    e.threads = p["threads"]

    if head in ("full_attention", "reference", "favor", "combiner", "relative_pre",
                "relative_post") or head in TRAIN_FAMILIES:
        if not need("d", "causal"):
            return None
        ls = lengths()
        if ls is None:
            warn("skipped %r: no L:<n> (or Lq:/Lk:) field" % m.name)
            return None
        h = p.get("H", 8)
        hkv = p.get("Hkv", h)
        e.causal = 1 if p["causal"] else 0
        e.x = ls[1]  # L, or Lk
        key = exact_key(p["d"], ls[0], ls[1], h, hkv, e.causal, e.threads)
        hs = "" if h == 8 and hkv == h else (" H:%s" % h + ("" if hkv == h else " Hkv:%s" % hkv))
        lq = "" if ls[0] == ls[1] else " Lq:%s" % ls[0]
        if head == "full_attention" and not rest:
            e.kind, e.group, e.key = "exact", "full_attention", key
            e.series = "full_attention d:%s%s%s" % (p["d"], hs, lq)
            e.plot_series = e.series
        elif head == "reference" and not rest:
            e.kind, e.group, e.baseline = "reference", "reference", key
            e.series = "reference d:%s%s%s" % (p["d"], hs, lq)
            e.plot_series = e.series
        elif head == "favor" and not rest:
            if not need("m"):
                return None
            e.kind, e.group, e.baseline = "favor", "favor", key
            e.series = "favor d:%s m:%s%s%s" % (p["d"], p["m"], hs, lq)
            e.plot_series = e.series
        elif head == "combiner" and len(rest) == 1:
            e.kind, e.group, e.baseline = "combiner", "combiner", key
            e.series = "combiner %s d:%s%s%s" % (rest[0], p["d"], hs, lq)
            e.plot_series = e.series
        elif head in ("relative_pre", "relative_post") and not rest:
            e.kind, e.group, e.baseline = "relative", "relative", key
            grid = p.get("grid", "")
            e.series = "%s d:%s grid:%s H:%s" % (head, p["d"], grid, h)
            e.plot_series = "%s d:%s" % (head, p["d"])
        elif head in TRAIN_FAMILIES and not rest:
            e.op, e.step = TRAIN_FAMILIES[head]
            grid = p.get("grid")
            if grid is None and e.op != "exact":
                warn("skipped %r: %s without a grid:<s>x<s> field" % (m.name, head))
                return None
            if grid is None:  # the exact training sweep: a row per (d, L, heads, mask, threads)
                e.kind, e.group = "train", "train"
                e.row = key[1:]
                e.series = "%s d:%s%s%s" % (head, p["d"], hs, lq)
            else:  # relative attention's training, or exact attention's backward on its shape
                e.kind, e.group = "relative_train", "relative_train"
                e.row = (str(grid), p["d"], ls[0], ls[1], h, hkv, e.causal, e.threads)
                e.series = "%s d:%s grid:%s%s%s" % (head, p["d"], grid, hs, lq)
            e.plot_series = e.series
        else:
            warn("skipped %r: unknown benchmark family %r" % (m.name, family))
            return None
        return e

    if head == "lambda" and len(rest) == 1:
        if not need("d", "L"):
            return None
        e.kind, e.group = "lambda", "lambda"
        e.x = p["L"]
        e.causal = 0
        e.baseline = exact_key(p["d"] // 4, p["L"], p["L"], 4, 4, 0, e.threads)
        fields = _fmt_fields(p, ["u", "r"])
        e.series = "lambda %s d:%s %s" % (rest[0], p["d"], fields)
        e.plot_series = "lambda %s %s" % (rest[0], fields)
        return e

    if head in ("decode", "favor_decode") and not rest:
        if not need("d", "Lk"):
            return None
        h = p.get("H", 8)
        e.x = p["Lk"]
        e.causal = 0  # one query over the whole cache: no mask applies
        e.group = "decode"
        dkey = ("decode", p["d"], p["Lk"], h, e.threads)
        hs = "" if h == 8 else " H:%s" % h
        if head == "decode":
            e.kind, e.key = "decode", dkey
            e.series = "decode d:%s%s" % (p["d"], hs)
        else:
            e.kind, e.baseline = "favor_decode", dkey
            e.series = "favor_decode d:%s m:%s%s" % (p["d"], p.get("m", "?"), hs)
        e.plot_series = e.series
        return e

    if head == "coatnet" and len(rest) == 1:
        if not need("batch"):
            return None
        e.kind, e.group = "coatnet", "coatnet"
        e.x = p["batch"]
        e.series = "coatnet %s image:%s" % (rest[0], p.get("image", "?"))
        e.plot_series = e.series
        return e

    if head == "peak" and not rest:
        e.kind, e.group = "peak", "peak"
        e.series = "peak"
        return e

    warn("skipped %r: unknown benchmark family %r" % (m.name, family))
    return None


def classify_all(meas):
    entries = []
    for m in meas.values():
        if m.error is not None:
            warn("skipped %r: the benchmark reported an error: %s" % (m.name, m.error))
            continue
        if m.time is None:
            if not m.name.endswith(("_BigO", "_RMS")):
                warn("skipped %r: no time in the JSON" % m.name)
            continue
        try:
            e = classify(m)
        except Exception as ex:  # a name this script did not foresee: skip it, never crash
            warn("skipped %r: %s: %s" % (m.name, type(ex).__name__, ex))
            continue
        if e is not None:
            entries.append(e)
    by_key = {e.key: e for e in entries if e.key is not None}
    users = defaultdict(set)
    for e in entries:
        if e.baseline is not None:
            b = by_key.get(e.baseline)
            if b is not None and e.m.time > 0:
                e.exact = b
                e.speedup = b.m.time / e.m.time
                users[id(b)].add(e.group)
    first = {}
    for e in entries:
        e.order = first.setdefault(e.series, len(first))
    # lambda: registered stage by stage; listed by term, then width
    lam = sorted({(e.family, e.params.get("d", 0), e.series) for e in entries if e.kind == "lambda"})
    rank = {t[2]: len(first) + i for i, t in enumerate(lam)}
    for e in entries:
        if e.kind == "lambda":
            e.order = rank[e.series]
        # exact attention measured only as the baseline of lambda or relative attention (other
        # heads than the main sweep's): listed with that family in the tables
        g = users.get(id(e))
        if e.kind == "exact" and g and len(g) == 1 and next(iter(g)) in ("lambda", "relative"):
            e.table_group = next(iter(g))
    return entries


# ------------------------------------------------------------------------------------------------
# Machine description

def read_cpuinfo():
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "model name" and model is None:
                    model = v.strip()
                elif k == "flags" and not flags:
                    flags = set(v.split())
    except OSError:
        pass
    return model, flags


def read_os_release():
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def find_cmake_cache(ctx, build_dir):
    candidates = []
    if build_dir:
        candidates.append(os.path.abspath(build_dir))
    exe = ctx.get("executable")
    if isinstance(exe, str) and exe:
        for base in (os.getcwd(), os.path.dirname(os.path.abspath(ctx.get("_path", ".")))):
            candidates.append(os.path.dirname(os.path.normpath(os.path.join(base, exe))))
    for c in candidates:
        d = c
        for _ in range(6):
            f = os.path.join(d, "CMakeCache.txt")
            if os.path.isfile(f):
                return f
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
    return None


def read_cmake_cache(path):
    out = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):[A-Z]+=(.*)$", line.rstrip("\n"))
                if m:
                    out[m.group(1)] = m.group(2)
    except OSError:
        pass
    return out


def compiler_version(path):
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        first = r.stdout.strip().splitlines()
        return first[0].strip() if first else None
    except (OSError, subprocess.SubprocessError):
        return None


def fmt_bytes(n):
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return "%d %s" % (n // size, unit)
    return "%d B" % n


def describe_machine(contexts, entries, args):
    ctx = contexts[0] if contexts else {}
    for other in contexts[1:]:
        for k in ("host_name", "num_cpus", "mhz_per_cpu"):
            if other.get(k) != ctx.get(k):
                warn("%s and %s differ in %s (%r vs %r): are they from the same machine?"
                     % (ctx.get("_path"), other.get("_path"), k, ctx.get(k), other.get(k)))
    info = OrderedDict()
    model, flags = read_cpuinfo()
    cpu = args.cpu
    if not cpu:
        cpu = model or "unknown CPU (pass --cpu)"
        if ctx.get("host_name") and ctx.get("host_name") != socket.gethostname():
            warn("the JSON was written on host %r, this is %r: the CPU model comes from this "
                 "machine's /proc/cpuinfo; pass --cpu to name the benchmark's CPU"
                 % (ctx.get("host_name"), socket.gethostname()))
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
        if isa and model:
            cpu += " (%s)" % isa
    info["CPU"] = cpu
    cores = ctx.get("num_cpus")
    line = "%s logical CPUs" % cores if cores else "unknown"
    if ctx.get("mhz_per_cpu"):
        line += " at %s MHz" % ctx["mhz_per_cpu"]
    caches = []
    for c in ctx.get("caches") or []:
        try:
            if c.get("type") == "Instruction":
                continue
            name = "L%d%s" % (int(c["level"]), "d" if c.get("type") == "Data" else "")
            share = int(c.get("num_sharing", 1) or 1)
            caches.append("%s %s%s" % (name, fmt_bytes(int(c["size"])),
                                       " (shared by %d)" % share if share > 1 else ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    if caches:
        line += "; " + ", ".join(caches)
    info["cores"] = line
    compiler = args.compiler
    cache = find_cmake_cache(ctx, args.build_dir)
    cc = read_cmake_cache(cache) if cache else {}
    if not compiler and cc.get("CMAKE_CXX_COMPILER"):
        compiler = compiler_version(cc["CMAKE_CXX_COMPILER"])
    build = []
    if cc.get("CMAKE_BUILD_TYPE"):
        build.append(cc["CMAKE_BUILD_TYPE"])
    if cc.get("ATTNKIT_SIMD"):
        build.append("ATTNKIT_SIMD=" + cc["ATTNKIT_SIMD"])
    info["compiler"] = (compiler or "unknown (pass --compiler)") + (
        " (%s)" % ", ".join(build) if build else "")
    info["OS"] = args.os or read_os_release() or "unknown (pass --os)"
    date = str(ctx.get("date", "unknown"))
    load = ctx.get("load_avg")
    if isinstance(load, list) and load and isinstance(load[0], (int, float)):
        date += " (load average %.2f at the start)" % float(load[0])
    info["date"] = date
    peaks = sorted((e for e in entries if e.kind == "peak"), key=lambda e: e.threads)
    if peaks:
        parts = ["%.1f GFLOP/s on %d thread%s" % (e.m.rates.get("GFLOP/s", float("nan")), e.threads,
                                                  "" if e.threads == 1 else "s") for e in peaks]
        label = peaks[0].m.label
        info["peak"] = ", ".join(parts) + (" (`peak`: %s)" % label if label else " (`peak`)")
    reps = sorted({e.m.repetitions for e in entries if e.m.repetitions})
    if reps:
        n = str(reps[0]) if len(reps) == 1 else "%d to %d" % (reps[0], reps[-1])
        info["statistics"] = ("time = minimum over %s repetitions; rates of the fastest repetition"
                              % n)
    if ctx.get("library_build_type") == "debug":
        info["note"] = ("Google Benchmark library built as debug (Debian's package): that is the "
                        "benchmark library, not attnkit")
    return info


# ------------------------------------------------------------------------------------------------
# Formatting

def fmt_time(s):
    if s is None or not math.isfinite(s):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if s >= scale or unit == "ns":
            v = s / scale
            return ("%.0f" % v if v >= 1000 else "%.1f" % v if v >= 100 else
                    "%.2f" % v if v >= 10 else "%.3f" % v) + " " + unit
    return "—"


def fmt_num(v, digits=3):
    if v is None or not math.isfinite(v):
        return "—"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.*f" % (max(0, digits - 1), v)


def fmt_speedup(v):
    if v is None:
        return "—"
    return ("%.1f×" % v) if v >= 10 else ("%.2f×" % v)


def sample_of(label):
    if not label:
        return "—"
    m = re.search(r"(whole call|sample [^,]*)", label)
    return m.group(1) if m else "whole call"


def mask_name(e):
    if e.kind in ("lambda", "coatnet", "decode", "favor_decode"):
        return "—"
    return "causal" if e.causal else "bidirectional"


def size_name(e):
    if e.kind == "coatnet":
        return "batch %s" % e.x
    if e.kind in ("decode", "favor_decode"):
        return "Lk %s" % e.x
    return str(e.x)


def sort_key(e):
    """Tables: by family, the exact baselines of a family first, then series in the order the
    benchmark registered them (first appearance in the JSON), then L, mask, threads."""
    g = e.table_group or e.group
    g = GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER)
    return (g, 0 if e.kind in ("exact", "decode") else 1, e.order, e.x or 0, e.causal, e.threads)


def full_table(entries):
    lines = ["| operator | L | mask | threads | time | speed-up vs exact | GFLOP/s | % of peak "
             "| spread | sample |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for e in sorted((e for e in entries if e.kind != "peak"), key=sort_key):
        r = e.m.rates
        spread = "%.2f" % (e.m.median / e.m.time) if e.m.median and e.m.time else "—"
        pct = r.get("pct_peak")
        if e.kind == "lambda" and "pos_pct_peak" in r:
            pct_s = "%s (position %s)" % (fmt_num(pct), fmt_num(r["pos_pct_peak"]))
        else:
            pct_s = fmt_num(pct)
        lines.append("| `%s` | %s | %s | %d | %s | %s | %s | %s | %s | %s |" % (
            e.series, size_name(e), mask_name(e), e.threads, fmt_time(e.m.time),
            fmt_speedup(e.speedup), fmt_num(r.get("GFLOP/s")), pct_s, spread, sample_of(e.m.label)))
    return "\n".join(lines) + "\n"


def summary_table(entries, threads, lengths):
    """Rows: operator and L; columns: (threads, mask). Cells: time and speed-up over exact
    attention (operators) or % of peak (exact attention, decode, the network)."""
    # exact attention measured only as the baseline of lambda or relative attention is in
    # table.md: its time is the operator's time x its speed-up
    # training has its own tables (training_tables)
    rows = [e for e in entries if e.kind not in ("peak", "train", "relative_train") and
            e.threads in threads and not
            (e.kind == "exact" and e.table_group in ("lambda", "relative"))]
    if lengths:
        by_series = defaultdict(set)
        for e in rows:
            by_series[e.series].add(e.x)
        rows = [e for e in rows if e.x in lengths or not (by_series[e.series] & lengths)]
    cols = sorted({(e.threads, 0 if mask_name(e) != "causal" else 1) for e in rows})
    if not cols:
        return "(no benchmarks)\n"
    header = "| operator | L |" + "".join(
        " %s, %d thread%s |" % ("causal" if c else "bidirectional", t, "" if t == 1 else "s")
        for t, c in cols)
    lines = [header, "| --- | ---: |" + " ---: |" * len(cols)]
    cells = OrderedDict()
    for e in sorted(rows, key=sort_key):
        row = cells.setdefault((e.series, size_name(e)), {})
        col = (e.threads, 0 if mask_name(e) != "causal" else 1)
        if e.speedup is not None:
            txt = "%s · %s" % (fmt_time(e.m.time), "**%s**" % fmt_speedup(e.speedup))
        elif "pct_peak" in e.m.rates and e.kind in ("exact", "decode", "coatnet"):
            txt = "%s · %s %%" % (fmt_time(e.m.time), fmt_num(e.m.rates["pct_peak"]))
        else:
            txt = fmt_time(e.m.time)
        if e.kind == "decode" and "KV_GB/s" in e.m.rates:
            txt = "%s · %s GB/s" % (fmt_time(e.m.time), fmt_num(e.m.rates["KV_GB/s"]))
        row[col] = txt
    for (series, size), row in cells.items():
        lines.append("| `%s` | %s |" % (series, size) + "".join(
            " %s |" % row.get(c, "") for c in cols))
    return "\n".join(lines) + "\n"


def heads_name(h, hkv):
    return str(h) if hkv == h else "%s/%s" % (h, hkv)


def torch_source_line(src):
    """One PyTorch file, as the exact training table's note names it."""
    mach = src["machine"]
    parts = []
    if mach.get("torch"):
        parts.append("torch %s" % mach["torch"])
    if isinstance(mach.get("threads"), int):
        parts.append("%d thread%s" % (mach["threads"], "" if mach["threads"] == 1 else "s"))
    parts.append(str(mach.get("dtype", "float32")))
    if mach.get("gqa"):
        parts.append("GQA via %s" % mach["gqa"])
    if mach.get("repetitions"):
        parts.append("minimum over %s repetitions" % mach["repetitions"])
    if mach.get("date"):
        parts.append(str(mach["date"]))
    return "`%s` (%s)" % (os.path.basename(src["path"]), ", ".join(parts))


def exact_training_table(entries, threads=None, lengths=(), torch=None):
    """Rows: (d, L, heads, mask, threads) of the train_* sweep; columns: forward (full_attention),
    forward with lse, backward, both, backward / forward, the backward's rates and, with torch
    (load_torch_sdpa's result), PyTorch SDPA's forward+backward and its time over train_step's.
    None when there is no row."""
    forward = {e.key[1:]: e for e in entries if e.kind == "exact"}
    rows = OrderedDict()
    for e in entries:
        if e.kind == "train" and (threads is None or e.threads in threads):
            rows.setdefault(e.row, {})[e.step] = e
    if lengths:  # as summary_table: a (d, heads) measured at any of the lengths keeps only those
        shape = lambda r: (r[0], r[1] != r[2], r[3], r[4])
        by_shape = defaultdict(set)
        for r in rows:
            by_shape[shape(r)].add(r[2])
        rows = OrderedDict((r, v) for r, v in rows.items()
                           if r[2] in lengths or not (by_shape[shape(r)] & lengths))
    if not rows:
        return None
    sources, times = torch if torch else ([], None)
    header = ("| d | L | heads | mask | threads | forward | forward + lse | backward | fwd + bwd "
              "| bwd / fwd | bwd GFLOP/s | bwd % of peak |")
    rule = "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if times is not None:
        header += " PyTorch fwd + bwd | vs PyTorch |"
        rule += " ---: | ---: |"
    lines = [header, rule]
    t = lambda e: e.m.time if e is not None else None
    for r in sorted(rows, key=lambda r: (r[4] != r[3] or r[3] != 8, r[0], r[3], r[4], r[2], r[1],
                                         r[5], r[6])):
        d, lq, lk, h, hkv, causal, thr = r
        steps = rows[r]
        fwd, lse, bwd, both = (forward.get(r), steps.get("forward_lse"), steps.get("backward"),
                               steps.get("step"))
        ratio = t(bwd) / t(fwd) if bwd is not None and fwd is not None and fwd.m.time > 0 else None
        rates = bwd.m.rates if bwd is not None else {}
        cells = [str(d), str(lk) if lq == lk else "%s/%s" % (lq, lk), heads_name(h, hkv),
                 "causal" if causal else "bidirectional", str(thr), fmt_time(t(fwd)),
                 fmt_time(t(lse)), fmt_time(t(bwd)), fmt_time(t(both)), fmt_speedup(ratio),
                 fmt_num(rates.get("GFLOP/s")), fmt_num(rates.get("pct_peak"))]
        if times is not None:
            pt = times.get(r)
            cells += [fmt_time(pt), fmt_speedup(pt / both.m.time if pt is not None and both is not None
                                                and both.m.time > 0 else None)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def relative_training_table(entries, threads=None):
    """Rows: (grid, d, heads, threads); columns: exact attention's backward on the grid's shape,
    relative_pre and relative_post backward (and their time over the exact backward), the pre and
    post training steps. None when there is no row."""
    rows = OrderedDict()
    for e in entries:
        if e.kind == "relative_train" and (threads is None or e.threads in threads):
            rows.setdefault(e.row, {})[(e.op, e.step)] = e
    if not rows:
        return None
    lines = ["| grid | d | heads | threads | exact backward | relative_pre backward | pre / exact "
             "| relative_post backward | post / exact | relative_pre step | relative_post step |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    t = lambda e: e.m.time if e is not None else None
    ratio = lambda e, b: (e.m.time / b.m.time if e is not None and b is not None and b.m.time > 0
                          else None)
    for r in sorted(rows, key=lambda r: (min(e.order for e in rows[r].values()), r[7])):
        grid, d, lq, lk, h, hkv, causal, thr = r
        c = rows[r]
        exact = c.get(("exact", "backward"))
        pre, post = c.get(("relative_pre", "backward")), c.get(("relative_post", "backward"))
        cells = [grid + (" causal" if causal else "") + ("" if lq == lk else " Lq:%s" % lq), str(d),
                 heads_name(h, hkv), str(thr), fmt_time(t(exact)), fmt_time(t(pre)),
                 fmt_speedup(ratio(pre, exact)), fmt_time(t(post)), fmt_speedup(ratio(post, exact)),
                 fmt_time(t(c.get(("relative_pre", "step")))),
                 fmt_time(t(c.get(("relative_post", "step"))))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def training_markdown(entries, heading, threads=None, lengths=(), torch=None):
    """The two training sections (heading: '##' in table.md, '####' in the README block); '' when
    the JSON has no training benchmarks."""
    out = []
    exact = exact_training_table(entries, threads, lengths, torch)
    if exact:
        note = ("Time of one call (minimum over the repetitions), batch 1: forward = "
                "`full_attention`; forward + lse = `train_forward` (the forward that also writes the "
                "log-sum-exp the backward reads); backward = `train_backward` (dQ, dK, dV); "
                "fwd + bwd = `train_step` (both, as a training step calls them); bwd / fwd = "
                "backward / forward; the backward's GFLOP/s and % of peak count 10·L²·d per head "
                "(visible pairs only when causal). heads: H, or H/Hkv for grouped-query heads.")
        if torch:
            sources = torch[0]
            note += (" PyTorch fwd + bwd: `scaled_dot_product_attention` forward and backward "
                     "together on the CPU (`tools/torch_sdpa_bench.py`: %s); vs PyTorch = its time / "
                     "fwd + bwd, same shape and thread count (— where not measured)."
                     % ("; ".join(torch_source_line(s) for s in sources) or "no file read"))
        out += ["%s Training: exact attention" % heading, "", note, "", exact.rstrip("\n"), ""]
    rel = relative_training_table(entries, threads)
    if rel:
        note = ("Time of one call (minimum over the repetitions) on the relative-attention shapes "
                "(`relative_attention_2d`, shapes and batch as bench_attention registers them): exact "
                "backward = `train_backward` with the grid's d, L and heads; relative_pre / "
                "relative_post backward = `relative_pre_backward` / `relative_post_backward` (dQ, dK, "
                "dV and the table's gradient, bias before / after the softmax); pre / exact, post / "
                "exact = their time / exact backward; step = forward with lse and backward "
                "(`relative_pre_step`, `relative_post_step`).")
        out += ["%s Training: relative attention" % heading, "", note, "", rel.rstrip("\n"), ""]
    return "\n".join(out)


def check_torch_matches(entries, torch):
    """A warning when PyTorch results have no row (train_* of the same shape and threads)."""
    if not torch:
        return
    rows = {e.row for e in entries if e.kind == "train"}
    missing = sorted(k for k in torch[1] if k not in rows)
    if missing:
        d, lq, lk, h, hkv, c, t = missing[0]
        warn("%d PyTorch SDPA result(s) have no train_* benchmark of the same shape and threads "
             "(e.g. d:%s L:%s H:%s Hkv:%s causal:%s threads:%s): not in the training table"
             % (len(missing), d, lk, h, hkv, c, t))


# ------------------------------------------------------------------------------------------------
# SVG plots (standard library only)

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#17becf", "#bcbd22", "#7f7f7f"]
MARKERS = ["circle", "square", "triangle", "diamond", "triangle_down", "cross"]
DASHES = ["", "7,4", "2,3", "9,3,2,3"]


def esc(s):
    return (str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def fmt_length(v):
    if v >= 1000 and abs(v / 1000 - round(v / 1000)) < 1e-9:
        k = v / 1000
        return "%gk" % k if k < 1000 else "%gM" % (k / 1000)
    return "%g" % v


def fmt_time_tick(v):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if v >= scale * 0.999 or unit == "ns":
            return "%g %s" % (float("%.3g" % (v / scale)), unit)
    return "%g" % v


def fmt_ratio_tick(v):
    return "%g×" % float("%.3g" % v)


def fmt_pct_tick(v):
    return "%g %%" % v


class LogAxis:
    def __init__(self, lo, hi, fmt):
        if not (lo > 0 and hi > 0):
            lo, hi = 1.0, 10.0
        if hi / lo < 1.5:
            lo, hi = lo / 1.25, hi * 1.25
        pad = (math.log10(hi) - math.log10(lo)) * 0.06 + 0.02
        self.a = math.log10(lo) - pad
        self.b = math.log10(hi) + pad
        self.fmt = fmt

    def frac(self, v):
        return (math.log10(v) - self.a) / (self.b - self.a)

    def ticks(self):
        """(value, labelled?) pairs: decades labelled, 2..9 minor; 2 and 5 labelled when the axis
        holds fewer than two decades."""
        out = []
        for k in range(math.floor(self.a), math.ceil(self.b) + 1):
            for mult in range(1, 10):
                v = mult * 10.0 ** k
                if self.a <= math.log10(v) <= self.b:
                    out.append((v, mult == 1))
        if sum(1 for _, major in out if major) < 2:
            out = [(v, major or round(v / 10 ** math.floor(math.log10(v) + 1e-9)) in (2, 5))
                   for v, major in out]
        return out


class LinAxis:
    def __init__(self, lo, hi, fmt, step):
        self.a, self.b, self.fmt, self.step = lo, hi, fmt, step

    def frac(self, v):
        return (v - self.a) / (self.b - self.a)

    def ticks(self):
        n = int(round((self.b - self.a) / self.step))
        return [(self.a + i * self.step, True) for i in range(n + 1)]


def marker_svg(kind, x, y, color, r=3.6):
    if kind == "circle":
        return '<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>' % (x, y, r, color)
    if kind == "square":
        return '<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>' % (
            x - r, y - r, 2 * r, 2 * r, color)
    if kind in ("triangle", "triangle_down"):
        s = 1 if kind == "triangle" else -1
        pts = [(x, y - s * 1.2 * r), (x - 1.1 * r, y + s * 0.8 * r), (x + 1.1 * r, y + s * 0.8 * r)]
        return '<polygon points="%s" fill="%s"/>' % (
            " ".join("%.1f,%.1f" % p for p in pts), color)
    if kind == "diamond":
        pts = [(x, y - 1.3 * r), (x + 1.1 * r, y), (x, y + 1.3 * r), (x - 1.1 * r, y)]
        return '<polygon points="%s" fill="%s"/>' % (
            " ".join("%.1f,%.1f" % p for p in pts), color)
    return ('<path d="M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f" stroke="%s" stroke-width="2"/>'
            % (x - r, y - r, x + r, y + r, x - r, y + r, x + r, y - r, color))


def figure_svg(title, panels, xlabel, ylabel, yaxis_kind, note=None):
    """panels: [(subtitle, [series])], series = dict(name, points [(x, y)], exact bool).
    yaxis_kind: 'time' | 'ratio' | 'pct'. Returns the SVG text."""
    pw, ph = 400, 290               # plot area of one panel
    ml, mr, mt, mb = 74, 18, 58, 52  # margins around a panel's plot area
    names = []
    for _, series in panels:
        for s in series:
            if s["name"] not in names:
                names.append(s["name"])
    style = {}  # name -> (color, marker, line width, dash): exact attention black, dashed after the first
    ci = ei = 0
    for n in names:
        exact = any(s["exact"] for _, ss in panels for s in ss if s["name"] == n)
        if exact:
            style[n] = ("#000000", MARKERS[ei % len(MARKERS)], 2.4, DASHES[ei % len(DASHES)])
            ei += 1
        else:
            style[n] = (PALETTE[ci % len(PALETTE)], MARKERS[ci % len(MARKERS)], 1.8, "")
            ci += 1
    panels_w = len(panels) * (ml + pw + mr)
    width = max(panels_w + 10, 600, int(8.8 * len(title)) + 40)
    x0 = (width - panels_w) // 2
    colw = max(180, 7 * max([len(n) for n in names] + [1]) + 50)
    leg_cols = max(1, min(len(names), (width - 20) // colw))
    colw = (width - 20) // leg_cols
    leg_rows = (len(names) + leg_cols - 1) // leg_cols
    note_lines = textwrap.wrap(note, max(40, int((width - 28) / 6.2))) if note else []
    height = mt + ph + mb + 16 + 20 * leg_rows + 15 * len(note_lines) + (4 if note_lines else 0)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="DejaVu Sans, Arial, Helvetica, sans-serif" font-size="12">'
           % (width, height, width, height),
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           '<text x="%d" y="22" text-anchor="middle" font-size="15" font-weight="bold">%s</text>'
           % (width // 2, esc(title))]
    for pi, (subtitle, series) in enumerate(panels):
        ox = x0 + pi * (ml + pw + mr) + ml
        oy = mt
        xs = [p[0] for s in series for p in s["points"] if p[0] > 0]
        ys = [p[1] for s in series for p in s["points"]]
        xa = LogAxis(min(xs or [1]), max(xs or [10]), fmt_length)
        if yaxis_kind == "pct":
            top = max([100.0] + ys)
            top = math.ceil(top / 20.0) * 20
            ya = LinAxis(0.0, top, fmt_pct_tick, 20.0)
        else:
            pos = [y for y in ys if y > 0]
            lo, hi = min(pos or [1]), max(pos or [10])
            if yaxis_kind == "ratio":
                lo, hi = min(lo, 1.0), max(hi, 1.0)
            ya = LogAxis(lo, hi, fmt_time_tick if yaxis_kind == "time" else fmt_ratio_tick)
        X = lambda v: ox + xa.frac(v) * pw
        Y = lambda v: oy + (1 - ya.frac(v)) * ph
        out.append('<text x="%.1f" y="%d" text-anchor="middle" font-size="13">%s</text>'
                   % (ox + pw / 2, oy - 10, esc(subtitle)))
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>'
                   % (ox, oy, pw, ph))
        for v, major in xa.ticks():
            x = X(v)
            if major:
                out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e3e3e3"/>'
                           % (x, oy, x, oy + ph))
            out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#444"/>'
                       % (x, oy + ph, x, oy + ph + (6 if major else 3)))
        for v, labelled in xa.ticks():
            if labelled:
                out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                           % (X(v), oy + ph + 19, esc(xa.fmt(v))))
        for v, major in ya.ticks():
            y = Y(v)
            is_decade = yaxis_kind == "pct" or abs(math.log10(v) - round(math.log10(v))) < 1e-9
            if is_decade:
                out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e3e3e3"/>'
                           % (ox, y, ox + pw, y))
            out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#444"/>'
                       % (ox - (6 if is_decade else 3), y, ox, y))
            if major:
                out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>'
                           % (ox - 9, y + 4, esc(ya.fmt(v))))
        if yaxis_kind == "ratio":
            out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#000" '
                       'stroke-dasharray="5,4"/>' % (ox, Y(1.0), ox + pw, Y(1.0)))
        if yaxis_kind == "pct":
            out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#000" '
                       'stroke-dasharray="5,4"/>' % (ox, Y(100.0), ox + pw, Y(100.0)))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                   % (ox + pw / 2, oy + ph + 38, esc(xlabel)))
        out.append('<text transform="translate(%d %.1f) rotate(-90)" text-anchor="middle">%s</text>'
                   % (ox - 60, oy + ph / 2, esc(ylabel)))
        if not series:
            out.append('<text x="%.1f" y="%.1f" text-anchor="middle" fill="#888">no data</text>'
                       % (ox + pw / 2, oy + ph / 2))
        for s in series:
            color, marker, lw, dash = style[s["name"]]
            pts = sorted(p for p in s["points"] if p[0] > 0 and (yaxis_kind == "pct" or p[1] > 0))
            if len(pts) > 1:
                out.append('<polyline fill="none" stroke="%s" stroke-width="%.1f"%s points="%s"/>'
                           % (color, lw, ' stroke-dasharray="%s"' % dash if dash else "",
                              " ".join("%.1f,%.1f" % (X(x), Y(y)) for x, y in pts)))
            for x, y in pts:
                out.append(marker_svg(marker, X(x), Y(y), color))
    ly = mt + ph + mb + 12
    for i, n in enumerate(names):
        color, marker, lw, dash = style[n]
        lx = 14 + (i % leg_cols) * colw
        yy = ly + (i // leg_cols) * 20
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="%.1f"%s/>'
                   % (lx, yy, lx + 26, yy, color, lw,
                      ' stroke-dasharray="%s"' % dash if dash else ""))
        out.append(marker_svg(marker, lx + 13, yy, color))
        out.append('<text x="%d" y="%d">%s</text>' % (lx + 34, yy + 4, esc(n)))
    for i, line in enumerate(note_lines):
        out.append('<text x="14" y="%d" fill="#555" font-size="11">%s</text>'
                   % (height - 8 - 15 * (len(note_lines) - 1 - i), esc(line)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def build_series(entries, value, exact_value=None, label_exact=True):
    """Series for one panel: operators (value(e)) and, if exact_value, their exact baselines."""
    ops = OrderedDict()
    exact = OrderedDict()
    ok = lambda v: v is not None and math.isfinite(v) and v >= 0
    for e in sorted(entries, key=sort_key):
        v = value(e)
        if ok(v) and e.x and e.x > 0:
            ops.setdefault(e.plot_series, []).append((e.x, v))
        if exact_value and e.exact is not None and e.exact.x and e.exact.x > 0:
            ev = exact_value(e.exact)
            if ok(ev):
                name = ("exact: " if label_exact else "") + exact_plot_name(e)
                pts = exact.setdefault(name, [])
                if (e.exact.x, ev) not in pts:
                    pts.append((e.exact.x, ev))
    series = [dict(name=n, points=p, exact=True) for n, p in exact.items()]
    series += [dict(name=n, points=p, exact=False) for n, p in ops.items()]
    return series


def exact_plot_name(e):
    if e.kind == "lambda":
        return "full_attention H:4 d:<width/4>"
    if e.kind == "relative":
        return "full_attention d:%s" % e.exact.params.get("d")
    return e.exact.series


def plot_note(group, es):
    """What a series merges along x in the lambda and relative plots (from the names)."""
    def by_l(field):
        seen = OrderedDict()
        for e in sorted(es, key=lambda e: e.x):
            if e.kind != "exact":
                seen.setdefault(e.x, set()).add(e.params.get(field))
        return ", ".join("%s at L = %s" % ("/".join(str(v) for v in sorted(vals, key=str)), x)
                         for x, vals in seen.items())
    if group == "lambda":
        return "L: pixels of the map; the width d changes with L: " + by_l("d")
    if group == "relative":
        return "heads per grid: " + by_l("H")
    return None


XLABEL = {"lambda": "L (pixels)", "relative": "L (pixels of the grid)"}


def write_plots(entries, out_dir, threads):
    """Writes the SVGs; returns [(group, kind, threads, filename, title)]."""
    written = []
    for group in GROUP_ORDER:
        if group in ("decode", "coatnet", "train", "relative_train"):
            continue  # tables only (training: training_tables)
        for t in threads:
            es = [e for e in entries if e.group == group and e.threads == t and e.x]
            if not es:
                continue
            masks = sorted({e.causal for e in es})
            if group == "lambda":
                masks = [0]

            def panel_name(c):
                if group == "lambda":
                    return "no mask"
                return "causal" if c else "bidirectional"

            thr = "%d thread%s" % (t, "" if t == 1 else "s")
            xlabel = XLABEL.get(group, "L (sequence length)")
            note = plot_note(group, es)
            if group != "full_attention":
                panels = [(panel_name(c), build_series([e for e in es if e.causal == c],
                                                       lambda e: e.m.time,
                                                       lambda b: b.m.time)) for c in masks]
                title = "%s: time, %s" % (GROUP_TITLE[group], thr)
                fn = "time_%s_t%d.svg" % (group, t)
                save(out_dir, fn, figure_svg(title, panels, xlabel, "time per call", "time", note))
                written.append((group, "time", t, fn, title))
                panels = [(panel_name(c), build_series([e for e in es if e.causal == c],
                                                       lambda e: e.speedup)) for c in masks]
                if any(s["points"] for _, ss in panels for s in ss):
                    title = "%s: speed-up over exact attention, %s" % (
                        GROUP_TITLE[group].split(" vs ")[0], thr)
                    fn = "speedup_%s_t%d.svg" % (group, t)
                    save(out_dir, fn, figure_svg(title, panels, xlabel,
                                                 "exact time / operator time", "ratio", note))
                    written.append((group, "speedup", t, fn, title))
                else:
                    warn("no exact attention beside %s on %s: no speed-up plot" % (group, thr))
            pct = lambda e: e.m.rates.get("pct_peak")
            panels = []
            for c in masks:
                sub = [e for e in es if e.causal == c]
                ser = build_series(sub, pct, pct if group != "full_attention" else None)
                if group == "full_attention":
                    ser = [s for s in ser if len(s["points"]) >= 2]
                panels.append((panel_name(c), ser))
            if any(s["points"] for _, ss in panels for s in ss):
                title = "%s: %% of peak, %s" % (GROUP_TITLE[group], thr)
                fn = "peak_%s_t%d.svg" % (group, t)
                save(out_dir, fn, figure_svg(title, panels, xlabel,
                                             "% of peak (threads × 1-thread peak)", "pct", note))
                written.append((group, "peak", t, fn, title))
    return written


def save(out_dir, fn, text):
    with open(os.path.join(out_dir, fn), "w", encoding="utf-8") as f:
        f.write(text)


# ------------------------------------------------------------------------------------------------
# Summary (the README block) and main

def summary_markdown(title, info, entries, plots, out_dir, readme_dir, threads, lengths, torch=None):
    rel = os.path.relpath(out_dir, readme_dir) if readme_dir else out_dir
    rel = rel.replace(os.sep, "/")
    lines = ["### %s" % title, ""]
    pairs = [("CPU", "cores"), ("compiler", "OS"), ("date",), ("peak", "statistics")]
    for keys in pairs:  # four lines; the library-build note stays in table.md
        parts = ["**%s**: %s" % (k, info[k]) for k in keys if k in info]
        if parts:
            lines.append("- " + "; ".join(parts))
    lines += ["",
              "Cells: time of one call (minimum over the repetitions) · speed-up over exact "
              "attention (`full_attention`) with the same d, L, heads, mask and threads (lambda: "
              "4-head attention of head dimension d/4 over the same pixels; `favor_decode`: exact "
              "decode over the same cache); exact attention and the network: · %% of the FMA peak; "
              "decode: · GB/s of K and V. Every benchmark, with GFLOP/s and its sample: "
              "[table.md](%s/table.md)." % rel, ""]
    lines.append(summary_table(entries, threads, lengths).rstrip("\n"))
    first = min(threads) if threads else None
    shown = [p for p in plots if p[2] == first]
    others = [p for p in plots if p[2] != first]
    if shown:  # one line per family: its time, speed-up and peak plots side by side
        lines.append("")
        by_group = OrderedDict()
        for group, kind, t, fn, title in shown:
            by_group.setdefault(group, []).append("![%s](%s/%s)" % (title, rel, fn))
        for imgs in by_group.values():
            lines.append(" ".join(imgs))
    if others:
        lines.append("")
        lines.append("Other thread counts: " + ", ".join(
            "[%s %s, %d threads](%s/%s)" % (kind, group, t, rel, fn)
            for group, kind, t, fn, title in others) + ".")
    training = training_markdown(entries, "####", threads, lengths, torch)
    if training:
        lines += ["", training.rstrip("\n")]
    return "\n".join(lines) + "\n"


def update_readme(path, machine, block):
    begin, end = "<!-- results:%s -->" % machine, "<!-- /results:%s -->" % machine
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        warn("cannot read %s: %s" % (path, e))
        return False
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        warn("%s has no '%s' ... '%s' block: not updated" % (path, begin, end))
        return False
    text = text[: i + len(begin)] + "\n" + block + text[j:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def parse_int_list(s, what):
    try:
        return sorted({int(x) for x in s.split(",") if x.strip()})
    except ValueError:
        raise SystemExit("bench_report: --%s wants comma-separated integers, got %r" % (what, s))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("json", nargs="+", help="Google Benchmark JSON files of bench_attention")
    ap.add_argument("--out", required=True, help="output directory, e.g. docs/bench/zen4")
    ap.add_argument("--machine", help="name of the machine (README block); default: basename of --out")
    ap.add_argument("--title", help="heading of the summary (default: '<machine>: <CPU>')")
    ap.add_argument("--cpu", help="CPU model (default: /proc/cpuinfo 'model name' of this machine)")
    ap.add_argument("--compiler", help="compiler (default: CMAKE_CXX_COMPILER --version of the "
                    "build the benchmark binary comes from)")
    ap.add_argument("--os", help="operating system (default: /etc/os-release of this machine)")
    ap.add_argument("--build-dir", help="CMake build directory of the benchmark binary")
    ap.add_argument("--threads", help="thread counts in the summary and plots (default: all)")
    ap.add_argument("--lengths", help="L values in the summary table and the exact training "
                    "table, for the operators measured at any of them (others keep all their rows); "
                    "table.md has every L")
    ap.add_argument("--update-readme", metavar="README", help="replace the results:<machine> block")
    ap.add_argument("--torch-sdpa", metavar="FILE", action="append", default=[],
                    help="JSON of tools/torch_sdpa_bench.py --out (may be repeated): PyTorch SDPA's "
                    "forward+backward beside train_step in the exact training table")
    args = ap.parse_args(argv)

    contexts, meas = load_files(args.json)
    entries = classify_all(meas)
    torch = load_torch_sdpa(args.torch_sdpa) if args.torch_sdpa else None
    if not entries:
        print("bench_report: no usable benchmarks in %s" % ", ".join(args.json), file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    machine = args.machine or os.path.basename(os.path.normpath(args.out))
    all_threads = sorted({e.threads for e in entries if e.kind != "peak"})
    threads = parse_int_list(args.threads, "threads") if args.threads else all_threads
    lengths = set(parse_int_list(args.lengths, "lengths")) if args.lengths else set()
    info = describe_machine(contexts, entries, args)

    plots = write_plots(entries, args.out, threads)
    header = "\n".join("- **%s**: %s" % (k, v) for k, v in info.items())
    sources = ", ".join("`%s`" % os.path.basename(c["_path"]) for c in contexts)
    if torch:
        check_torch_matches(entries, torch)
        sources += "; PyTorch: " + ", ".join("`%s`" % os.path.basename(s["path"]) for s in torch[0])
    training = training_markdown(entries, "##", torch=torch)
    save(args.out, "table.md", "# %s: every benchmark\n\n%s\n- **from**: %s\n\n%s%s" % (
        machine, header, sources, full_table(entries), "\n" + training if training else ""))
    readme_dir = os.path.dirname(os.path.abspath(args.update_readme)) if args.update_readme else None
    title = args.title or "%s: %s" % (machine, info.get("CPU", "?"))
    block = summary_markdown(title, info, entries, plots, os.path.abspath(args.out),
                             readme_dir or os.getcwd(), threads, lengths, torch)
    save(args.out, "summary.md", block)
    sys.stdout.write(block)
    if args.update_readme:
        if update_readme(args.update_readme, machine, block):
            print("bench_report: updated the results:%s block of %s" % (machine, args.update_readme),
                  file=sys.stderr)
    print("bench_report: %d benchmarks, %d plots, %d warnings -> %s"
          % (len(entries), len(plots), len(WARNINGS), args.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

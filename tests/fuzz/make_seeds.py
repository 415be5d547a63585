#!/usr/bin/env python3
"""Writes the seed corpora of the attnkit fuzz targets (tests/fuzz/corpus/{safetensors,api}).

Small valid safetensors files of every dtype (with metadata, padding, empty tensors) and small
invalid ones (one per kind of error the reader reports), and byte strings for fuzz_api that decode
into valid calls of each operator. Deterministic; run it again after changing the decoders:
    /usr/bin/python3 tests/fuzz/make_seeds.py
"""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def st(header, data=b"", length=None, pad=0):
    h = (json.dumps(header, separators=(",", ":")) if not isinstance(header, str) else header).encode()
    h += b" " * pad
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def safetensors_seeds():
    f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-40, float("inf"))
    seeds = {
        "valid_f32.st": st({"w": entry("F32", [2, 3], 0, 24)}, f32),
        "valid_meta_pad.st": st({"__metadata__": {"format": "pt"}, "w": entry("F32", [6], 0, 24)}, f32, pad=5),
        "valid_dtypes.st": st(
            {
                "a": entry("F64", [1], 0, 8),
                "b": entry("F16", [2], 8, 12),
                "c": entry("BF16", [2], 12, 16),
                "d": entry("I64", [1], 16, 24),
                "e": entry("I32", [1], 24, 28),
                "f": entry("I16", [1], 28, 30),
                "g": entry("I8", [1], 30, 31),
                "h": entry("U8", [1], 31, 32),
                "i": entry("BOOL", [2], 32, 34),
                "j": entry("F32", [0, 3], 34, 34),
                "k": entry("F32", [], 34, 38),
            },
            struct.pack("<d", 0.5) + bytes([0, 60, 0, 188, 128, 63, 0, 192]) + struct.pack("<qihbB", -3, 7, -2, -1, 255)
            + bytes([1, 0]) + struct.pack("<f", 2.0),
        ),
        "valid_empty.st": st({}),
        "bad_duplicate_entry_key.st": st('{"w":{"dtype":"F32","dtype":"I8","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        "bad_nul.st": st('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}\0{}', b"\0" * 4),
        "bad_nested.st": st('{"w":' + "[" * 80 + "]" * 80 + "}"),
        "bad_offsets.st": st({"w": entry("F32", [2], 0, 4)}, b"\0" * 4),
        "bad_hole.st": st({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, b"\0" * 12),
        "bad_length.st": st({}, length=1000),
        "bad_shape.st": st({"w": entry("F32", [-1], 0, 4)}, b"\0" * 4),
        "bad_dtype.st": st({"w": entry("U64", [1], 0, 8)}, b"\0" * 8),
        "bad_bool.st": st({"w": entry("BOOL", [1], 0, 1)}, b"\2"),
    }
    return seeds


def api_seeds():
    rng = random.Random(1)
    seeds = {}
    # fuzz_api decodes: op, B, G, Hkv, Lq, dk, dv, [Lk], threads, then per view a layout byte,
    # extents bytes (< 200: the intended extent) and a 2-byte offset; then options.
    for op in range(8):
        for variant in range(3):
            b = [op, 1 + variant, variant, 1 + variant % 2, 5 + 3 * variant, 4 + variant, 3 + variant, 0, 1]
            b += [rng.randrange(200) for _ in range(160)]
            seeds[f"op{op}_{variant}.bin"] = bytes(b)
    seeds["zeros.bin"] = bytes(64)
    return seeds


def main():
    for name, seeds in (("safetensors", safetensors_seeds()), ("api", api_seeds())):
        d = os.path.join(HERE, "corpus", name)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
        for fname, data in seeds.items():
            with open(os.path.join(d, fname), "wb") as out:
                out.write(data)
        print(f"{d}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()

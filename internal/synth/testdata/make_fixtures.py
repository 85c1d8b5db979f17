#!/usr/bin/env python3
"""Make the torch-written fixtures the synth tests compare against, byte for byte.

Run with Debian's torch (python3-torch 1.13.1+dfsg, which reports 1.13.0a0) from this
directory (it needs about 9 GB of memory and disk for the big fixture):
    /usr/bin/python3 make_fixtures.py
Writes:
  small.json, small_zip.pt, small_legacy.pt  a 12-tensor state dict with every supported dtype,
                                             scalar and 4-d shapes, keys 10 and 11 (sorted order)
  many.json.gz, many_zip_data.pkl.gz,         a 1001-tensor state dict: memo indices past 255,
  many_legacy_head.bin.gz                    SETITEMS batching, 2- and 4-byte ints; only the
                                             pickles (the zip's data.pkl; the legacy file up to
                                             its raw storages)
  big_head.bin, big_tail.bin                 a zip with a 2**32+100-byte storage (zeros) and a
                                             storage past 4 GiB (ten float32 ones): the bytes
                                             before and after the big storage's data
"""
import collections
import gzip
import io
import json
import os
import struct
import zipfile

import torch


def describe(sd, legacy_keys):
    out = []
    for i, (name, t) in enumerate(sd.items()):
        out.append({
            "name": name,
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "zip_key": str(i),
            "legacy_key": legacy_keys[name],
            "data": t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
            if t.dim() > 0 else t.reshape(1).view(torch.uint8).numpy().tobytes().hex(),
        })
    return out


def legacy_keys(sd):
    return {name: str(t.storage()._cdata) for name, t in sd.items()}


def small():
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict()
    specs = [
        (torch.float16, [2, 3]), (torch.float32, [4]), (torch.bfloat16, [2, 2]),
        (torch.float64, []), (torch.int64, [3]), (torch.int32, [1, 1, 1, 2]),
        (torch.int16, [2]), (torch.int8, [3]), (torch.uint8, [5]), (torch.bool, [4]),
        (torch.complex64, [2]), (torch.float16, [3, 3]),
    ]
    for i, (dt, shape) in enumerate(specs):
        if dt == torch.bool:
            t = torch.randint(0, 2, shape, generator=g).bool()
        elif dt.is_floating_point or dt.is_complex:
            t = torch.randn(shape, generator=g, dtype=torch.float64).to(dt)
        else:
            t = torch.randint(-100 if dt != torch.uint8 else 0, 100, shape, generator=g).to(dt)
        sd[f"model.layers.{i}.weight"] = t
    torch.save(sd, "small_zip.pt")
    keys = legacy_keys(sd)
    torch.save(sd, "small_legacy.pt", _use_new_zipfile_serialization=False)
    with open("small.json", "w") as f:
        json.dump({"prefix": "small_zip", "tensors": describe(sd, keys)}, f, indent=1)


def many():
    sd = collections.OrderedDict()
    for i in range(1001):
        if i == 500:
            t = torch.zeros(70000, dtype=torch.float64)  # new storage class at memo > 255
        elif i == 999:
            t = torch.zeros(300, 300, dtype=torch.int64)  # BININT2 sizes, BININT numel
        elif i % 4 == 0:
            t = torch.zeros(i % 7 + 1, 3, dtype=torch.float16)
        elif i % 4 == 1:
            t = torch.zeros(i % 5 + 1, dtype=torch.float32)
        elif i % 4 == 2:
            t = torch.zeros((), dtype=torch.bfloat16)
        else:
            t = torch.zeros(2, 1, 3, i % 3 + 1, dtype=torch.float16)
        sd[f"model.layers.{i}.weight"] = t
    buf = io.BytesIO()
    torch.save(sd, buf)
    with zipfile.ZipFile(buf) as z:
        pkl = z.read("archive/data.pkl")
    with gzip.GzipFile("many_zip_data.pkl.gz", "wb", mtime=0) as f:
        f.write(pkl)
    keys = legacy_keys(sd)
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    data_bytes = sum(8 + t.numel() * t.element_size() for t in sd.values())
    with gzip.GzipFile("many_legacy_head.bin.gz", "wb", mtime=0) as f:
        f.write(raw[: len(raw) - data_bytes])
    desc = describe(sd, keys)
    for d in desc:
        d.pop("data")
    with gzip.GzipFile("many.json.gz", "wb", mtime=0) as f:
        f.write(json.dumps({"tensors": desc}).encode())


def big():
    sd = collections.OrderedDict()
    sd["a"] = torch.zeros(2**32 + 100, dtype=torch.uint8)
    sd["b"] = torch.ones(10, dtype=torch.float32)
    path = "/tmp/big.pt"  # the prefix is "big"
    torch.save(sd, path)
    del sd
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("big/data/0")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(0)
        head = f.read(start)
        f.seek(start + info.file_size)
        tail = f.read()
    os.remove(path)
    open("big_head.bin", "wb").write(head)
    open("big_tail.bin", "wb").write(tail)


if __name__ == "__main__":
    print("torch", torch.__version__)
    small()
    many()
    big()

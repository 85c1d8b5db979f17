#!/usr/bin/env python3
"""The Python baseline of bench/run.sh: convert a PyTorch checkpoint to safetensors the way the
Hugging Face convert script does (safetensors/bindings/python/convert.py, convert_file):

    loaded = torch.load(src, map_location="cpu", weights_only=True)
    unwrap a "state_dict" entry; drop the shared aliases (_remove_duplicate_names);
    make every tensor contiguous; safetensors.torch.save_file(..., metadata={"format": "pt"});
    then reload the output and torch.equal every tensor with the loaded one.

Usage: baseline.py SRC DST [--no-check]
Prints one JSON line on stdout with the phase times in seconds:
    {"load": s, "save": s, "check": s, "tensors": n, "writer": "safetensors"|"pure-python"}
Exits 3 with a note on stderr when torch is not installed.

When the `safetensors` package is missing (Debian has no python3-safetensors), the file is written
by the small pure-Python writer below, which lays out the file as safetensors does (header JSON
padded with spaces to 8 bytes, tensors ordered by dtype alignment then name) and, like save_file,
materialises every tensor as bytes before writing; the reload uses torch.frombuffer.
"""
import json
import os
import struct
import sys
import time
from collections import defaultdict

try:
    import torch
except ImportError:
    print("baseline: torch is not installed (Debian: apt-get install python3-torch)", file=sys.stderr)
    sys.exit(3)

try:
    from safetensors.torch import load_file, save_file
except ImportError:
    load_file = save_file = None

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.complex64: "C64",
}
# The safetensors Dtype enum order: save_file writes higher-ranked dtypes first.
RANK = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
BY_NAME = {v: k for k, v in DTYPES.items()}


def storage_ptr(t):
    return t.storage().data_ptr()


def storage_size(t):
    s = t.storage()
    return s.nbytes() if hasattr(s, "nbytes") else s.size() * t.element_size()


def remove_duplicate_names(state_dict):
    """Names to drop: for each group of tensors sharing one storage, keep one name whose tensor
    covers the whole storage (the first in sorted order), as _remove_duplicate_names does."""
    groups = defaultdict(set)
    for k, v in state_dict.items():
        if v.device != torch.device("meta") and storage_ptr(v) != 0 and storage_size(v) != 0:
            groups[(v.device, storage_ptr(v), storage_size(v))].add(k)
    to_remove = []
    for names in groups.values():
        if len(names) < 2:
            continue
        complete = sorted(
            n for n in names
            if state_dict[n].data_ptr() == storage_ptr(state_dict[n])
            and state_dict[n].nelement() * state_dict[n].element_size() == storage_size(state_dict[n]))
        if not complete:
            raise RuntimeError(f"no tensor covers the storage shared by {sorted(names)}")
        keep = complete[0]
        to_remove.extend(n for n in sorted(names) if n != keep)
    return to_remove


def tensor_bytes(t):
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def pure_save(tensors, path, metadata):
    order = sorted(tensors.items(), key=lambda kv: (-RANK.index(DTYPES[kv[1].dtype]), kv[0]))
    blobs, header, off = [], {"__metadata__": metadata}, 0
    for name, t in order:
        b = tensor_bytes(t)  # save_file's _tobytes: one copy of every tensor before writing
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def pure_load(path):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base, out = 8 + n, {}
    for name, info in header.items():
        dt = BY_NAME[info["dtype"]]
        start, end = info["data_offsets"]
        if end == start:
            out[name] = torch.empty(info["shape"], dtype=dt)
            continue
        count = (end - start) // torch.empty((), dtype=dt).element_size()
        out[name] = torch.frombuffer(data, dtype=dt, count=count, offset=base + start).reshape(info["shape"])
    return out


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = args
    t0 = time.monotonic()
    loaded = torch.load(src, map_location="cpu", weights_only=True)
    if "state_dict" in loaded:
        loaded = loaded["state_dict"]
    for k in remove_duplicate_names(loaded):
        del loaded[k]
    loaded = {k: v.contiguous() for k, v in loaded.items()}
    t1 = time.monotonic()
    metadata = {"format": "pt"}
    if save_file is not None:
        save_file(loaded, dst, metadata=metadata)
    else:
        pure_save(loaded, dst, metadata)
    t2 = time.monotonic()
    if "--no-check" not in argv:
        reloaded = load_file(dst) if load_file is not None else pure_load(dst)
        for k, v in loaded.items():
            if not torch.equal(v, reloaded[k]):
                raise RuntimeError(f"The output tensors do not match for key {k}")
    t3 = time.monotonic()
    print(json.dumps({"load": round(t1 - t0, 3), "save": round(t2 - t1, 3), "check": round(t3 - t2, 3),
                      "tensors": len(loaded), "writer": "safetensors" if save_file else "pure-python"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

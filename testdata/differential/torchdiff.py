#!/usr/bin/python3
"""Differential harness: what torch 1.13 reads from a checkpoint against what we plan.

Run with Debian's PyTorch (python3-torch), from the repository root:

    go build -o /tmp/torchzip-plan ./internal/torchzip/cmd/torchzip-plan
    /usr/bin/python3 testdata/differential/torchdiff.py --plan /tmp/torchzip-plan \
        --out /tmp/torchdiff --minutes 60

Each round builds benign checkpoints with torch.save (zip and legacy), hostile-structure twins
of them (the container differentials of issue 9, with benign payloads) and random mutations of
both (byte flips and header-field rewrites), then reads every file twice:

  * torch's way: torch.load's own order (zip by magic, else tarfile, else the legacy pickles),
    torch._C.PyTorchFileReader for the records of a zip, the legacy pickle boundaries as
    pickle.load leaves them, and torch.load (resolving only the globals torch.save writes) for the tensors;
  * ours: the torchzip-plan command (container streams and records, then a full conversion).

A file is a DISAGREEMENT when we convert it (exit 0) and torch reads something else: another
container kind, another data.pkl or legacy pickle, another record, other tensors. Disagreements
are copied to --out with a JSON note; so are files we convert that torch cannot load at all
("lenient", reported separately). Only benign payloads are ever generated: never point this at
the hostile corpus.
"""

import argparse
import ctypes
import hashlib
import io
import json
import os
import pickle
import random
import resource
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
import zipfile
import zlib

import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.complex64: "C64",
}


# ---------------------------------------------------------------------------------------------
# Benign checkpoints


def benign_objects(rng):
    """A few small state dicts of several dtypes, with views and shared storages."""
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    base = torch.randn(4, 6, generator=g)
    objs = [
        {"w": torch.randn(3, 4, generator=g), "b": torch.arange(5, dtype=torch.int64)},
        {"a": base, "t": base.t(), "row": base[1], "h": torch.randn(7, generator=g).half()},
        {"x": torch.tensor([True, False, True]), "y": torch.randint(0, 100, (2, 3), generator=g, dtype=torch.int32),
         "z": torch.randn(2, 2, generator=g).to(torch.bfloat16)},
        {"layer": {"weight": torch.randn(2, 5, generator=g), "bias": torch.zeros(2)}, "step": 3},
        {"state_dict": {"p": torch.randn(3, generator=g)}, "epoch": 1},
        {"big": torch.randn(300, 70, generator=g), "i8": torch.randint(-5, 5, (9,), generator=g, dtype=torch.int8)},
    ]
    return objs


def save(obj, path, legacy, protocol=2):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)


# ---------------------------------------------------------------------------------------------
# A zip writer with full control over every field, for hostile twins


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def zip64_field(*values):
    body = b"".join(u64(v) for v in values)
    return u16(1) + u16(len(body)) + body


def local_header(name, data, method=0, flags=0, crc=None, csize=None, usize=None, extra=b""):
    crc = zlib.crc32(data) if crc is None else crc
    return (u32(0x04034B50) + u16(20) + u16(flags) + u16(method) + u32(0) + u32(crc)
            + u32(len(data) if csize is None else csize) + u32(len(data) if usize is None else usize)
            + u16(len(name)) + u16(len(extra)) + name + extra)


def central_header(name, data, offset, method=0, flags=0, crc=None, csize=None, usize=None, extra=b"", raw_len=None):
    crc = zlib.crc32(data) if crc is None else crc
    n = len(data) if raw_len is None else raw_len
    return (u32(0x02014B50) + u16(20) + u16(20) + u16(flags) + u16(method) + u32(0) + u32(crc)
            + u32(n if csize is None else csize) + u32(len(data) if usize is None else usize)
            + u16(len(name)) + u16(len(extra)) + u16(0) + u16(0) + u16(0) + u32(0)
            + u32(offset) + name + extra)


def eocd(count, size, offset, comment=b""):
    return (u32(0x06054B50) + u16(0) + u16(0) + u16(count) + u16(count) + u32(size) + u32(offset)
            + u16(len(comment)) + comment)


def eocd64_and_locator(at, count, size, offset):
    rec = (u32(0x06064B50) + u64(44) + u16(45) + u16(45) + u32(0) + u32(0) + u64(count) + u64(count)
           + u64(size) + u64(offset))
    return rec + u32(0x07064B50) + u32(0) + u64(at) + u32(1)


def zip_records(path):
    """The records of a torch zip, in order, as (name, data) pairs, read with zipfile."""
    with zipfile.ZipFile(path) as z:
        return [(i.filename.encode(), z.read(i)) for i in z.infolist()]


def write_plain(records):
    """Local headers, then a directory, then the end record: a clean archive."""
    out, cd = b"", b""
    for name, data in records:
        cd += central_header(name, data, len(out))
        out += local_header(name, data) + data
    return out + cd + eocd(len(records), len(cd), len(out))


def torch_data_pkl(obj):
    """The data.pkl torch.save writes for obj."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as z:
        return next(z.read(n) for n in z.namelist() if n.endswith("/data.pkl"))


def renamed(obj):
    """obj with its top-level keys' case swapped: saved, it references the same storages in the
    same order (keys 0, 1, ...) and has the same length, so its data.pkl fits the original's
    records and converts, to other names. This is the benign twin of a payload: the pickle a
    second reader would see."""
    if isinstance(obj, dict):
        return {str(k).swapcase(): v for k, v in obj.items()}
    return {"ALT": obj}


def swap_data_pkl(records, other):
    """The same records with another data.pkl (other's, as torch.save writes it)."""
    return [(n, torch_data_pkl(other) if n.endswith(b"/data.pkl") else d) for n, d in records]


def hostile_dup_zip64(records, other):
    """Differential 1: data.pkl's directory entry has two ZIP64 fields with different offsets.
    (miniz checks the 32-bit offset plus the compressed size against the file size unless the
    size is saturated too, so both are.)"""
    body, offs = b"", {}
    for name, data in records:
        offs[name] = len(body)
        body += local_header(name, data) + data
    name = next(n for n, _ in records if n.endswith(b"/data.pkl"))
    alt = torch_data_pkl(other)
    alt_off = len(body)
    body += local_header(name, alt) + alt
    cd = b""
    for n, d in records:
        if n == name:
            # CRC 0 (torch's "CRC disabled") lets a reader of either pickle skip the check.
            extra = zip64_field(len(d), offs[n]) + zip64_field(len(alt), alt_off)
            cd += central_header(n, d, 0xFFFFFFFF, csize=0xFFFFFFFF, crc=0, extra=extra)
        else:
            cd += central_header(n, d, offs[n])
    return body + cd + eocd(len(records), len(cd), len(body))


def hostile_two_dirs(records, other):
    """Differential 2: the end record's directory starts with an entry archive/zip rejects
    (saturated compressed size, no ZIP64 field); a second directory sits in the gap before the
    end record, where archive/zip's "prepended data" fallback finds it."""
    prefix = records[0][0].split(b"/")[0]
    body, offs = b"", {}
    for name, data in records:
        offs[name] = len(body)
        body += local_header(name, data) + data
    alt = swap_data_pkl(records, other)
    alt_offs = {}
    for name, data in alt:
        alt_offs[name] = len(body)
        body += local_header(name, data) + data
    junk = prefix + b"/junk"
    cd_a = central_header(junk, b"", 0, csize=0xFFFFFFFF, raw_len=0)
    for n, d in records:
        cd_a += central_header(n, d, offs[n])
    # archive/zip reads cd_b with a base offset of the gap (its length) added to every offset,
    # and wants as many entries as the end record counts.
    gap = len(central_header(junk, b"", 0)) + sum(len(central_header(n, d, 0)) for n, d in alt)
    cd_b = central_header(junk, b"", 0)
    for n, d in alt:
        cd_b += central_header(n, d, alt_offs[n] - gap)
    a_off = len(body)
    out = body + cd_a + cd_b
    return out + eocd(len(records) + 1, len(cd_a), a_off)


def hostile_locator(records, other):
    """Differential 3: a ZIP64 locator whose record names one directory while the 32-bit end
    record (not saturated) names another."""
    body, offs = b"", {}
    for name, data in records:
        offs[name] = len(body)
        body += local_header(name, data) + data
    alt = swap_data_pkl(records, other)
    alt_offs = {}
    for name, data in alt:
        alt_offs[name] = len(body)
        body += local_header(name, data) + data
    cd_a = b"".join(central_header(n, d, offs[n]) for n, d in records)
    cd_b = b"".join(central_header(n, d, alt_offs[n]) for n, d in alt)
    a_off = len(body)
    b_off = a_off + len(cd_a)
    out = body + cd_a + cd_b
    z64 = eocd64_and_locator(len(out), len(records), len(cd_a), a_off)
    return out + z64 + eocd(len(alt), len(cd_b), b_off)


def hostile_short_stored(records, _other):
    """Also found: a stored record whose directory declares more bytes than it holds."""
    body, offs = b"", {}
    for name, data in records:
        offs[name] = len(body)
        body += local_header(name, data) + data
    cd = b""
    for n, d in records:
        if b"/data/" in n:
            cd += central_header(n, d, offs[n], usize=len(d) + 8)
        else:
            cd += central_header(n, d, offs[n])
    return body + cd + eocd(len(records), len(cd), len(body))


def hostile_case(records, other):
    """A second data.pkl differing only in case: miniz's lookup ignores case."""
    prefix = records[0][0].split(b"/")[0]
    return write_plain(records + [(prefix + b"/DATA.PKL", torch_data_pkl(other))])


def hostile_prepended(records, _other):
    """Bytes before the first local header, the directory offsets shifted to match."""
    pad = b"\x00" * 37
    body, offs = pad, {}
    for name, data in records:
        offs[name] = len(body)
        body += local_header(name, data) + data
    cd = b"".join(central_header(n, d, offs[n]) for n, d in records)
    return body + cd + eocd(len(records), len(cd), len(body))


def hostile_tar_legacy(legacy_bytes, _other):
    """Differential 4: a legacy checkpoint whose first 512 bytes are a valid V7 tar header
    (no ustar magic), made by replacing sys_info (pickle #3, which torch ignores) with a long
    string. torch.load opens it with tarfile and never reads the legacy pickles."""
    f = io.BytesIO(legacy_bytes)
    pickle.load(f)
    pickle.load(f)
    head = legacy_bytes[:f.tell()]  # the magic number and protocol version pickles
    text = bytearray(b"a" * 600)
    start = len(head) + 7  # PROTO 2, BINUNICODE, 4-byte length

    def put(at, value):
        text[at - start:at - start + len(value)] = value

    put(100, b"0000644\x00")
    put(108, b"0000000\x00")
    put(116, b"0000000\x00")
    put(124, b"00000000000\x00")
    put(136, b"00000000000\x00")
    put(148, b"        ")
    put(156, b"0")
    put(157, b"\x00" * 355)
    sysinfo = b"\x80\x02X" + u32(len(text)) + bytes(text) + b"."
    pickle.load(f)  # the original sys_info, replaced
    out = bytearray(head + sysinfo + legacy_bytes[f.tell():])
    s = sum(out[:148]) + 8 * 32 + sum(out[156:512])
    out[148:156] = b"%06o\x00 " % s
    return bytes(out)


ZIP_HOSTILE = [hostile_dup_zip64, hostile_two_dirs, hostile_locator, hostile_short_stored, hostile_case,
               hostile_prepended]


# ---------------------------------------------------------------------------------------------
# Mutations


def zip_fields(b):
    """Offsets and widths of the header fields of a zip, found by signature."""
    fields = []
    layouts = {
        b"PK\x03\x04": [(4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
        b"PK\x01\x02": [(6, 2), (8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2),
                        (34, 2), (42, 4)],
        b"PK\x05\x06": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
        b"PK\x06\x06": [(4, 8), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8), (48, 8)],
        b"PK\x06\x07": [(4, 4), (8, 8), (16, 4)],
    }
    for sig, layout in layouts.items():
        i = b.find(sig)
        while i >= 0:
            fields += [(i + o, w) for o, w in layout if i + o + w <= len(b)]
            i = b.find(sig, i + 1)
    return fields


def mutate(b, rng):
    b = bytearray(b)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.random()
        fields = zip_fields(b) if kind < 0.6 else []
        if fields:
            at, width = rng.choice(fields)
            old = int.from_bytes(b[at:at + width], "little")
            new = rng.choice([0, 1, old + 1, old - 1, old + 8, old - 8, (1 << (8 * width)) - 1,
                              (1 << (8 * width)) - 2, rng.randrange(1 << (8 * width)), old ^ 0x20,
                              old + len(b) // 2])
            b[at:at + width] = (new % (1 << (8 * width))).to_bytes(width, "little")
        elif kind < 0.8 and len(b) > 0:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind < 0.9:
            at = rng.randrange(len(b) + 1)
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 22, 46])))
        elif len(b) > 8:
            at = rng.randrange(len(b))
            del b[at:at + rng.choice([1, 4, 22])]
    return bytes(b)


# ---------------------------------------------------------------------------------------------
# torch's reading


def digest(b):
    return hashlib.sha256(b).hexdigest()


def tensor_bytes(t):
    t = t.detach().contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()) if t.numel() else b""


def flatten(obj):
    """Tensors by the converter's names (testdata/README.md): state_dict selected, dotted paths."""
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    out = {}

    def walk(o, path):
        if isinstance(o, torch.Tensor):
            out[path or "tensor"] = o
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{path}.{i}" if path else str(i))

    walk(obj, "")
    return out


# What torch.load may resolve while the harness loads a file: the tensor machinery torch.save
# writes, nothing else (mutations could spell another global; they must not run it).
ALLOWED = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
           ("torch._utils", "_rebuild_tensor"), ("collections", "OrderedDict"), ("torch", "Size")}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED or module == "torch" and name.endswith("Storage"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"harness refuses global {module}.{name}")


class SafePickle:
    """A pickle_module for torch.load that resolves only ALLOWED globals."""
    Unpickler = SafeUnpickler
    __name__ = "safe_pickle"

    @staticmethod
    def load(f, **kw):
        return SafeUnpickler(f, **kw).load()


class Recorder(pickle.Unpickler):
    """Reads a pickle as pickle.load does, without resolving anything it names."""

    def find_class(self, module, name):
        return lambda *a, **k: None

    def persistent_load(self, pid):
        return None


def torch_reading(path):
    """What torch 1.13 reads from the file, following torch.load's order."""
    r = {"path": None}
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        r["path"] = "zip"
        try:
            z = torch._C.PyTorchFileReader(path)
            names = z.get_all_records()
            r["records"] = {}
            for n in names:
                try:
                    r["records"][n] = digest(bytes(z.get_record(n)))
                except Exception:  # noqa: BLE001 - a record torch cannot read
                    r["records"][n] = None
            r["data_pkl"] = digest(bytes(z.get_record("data.pkl"))) if z.has_record("data.pkl") else None
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError and others
            r["zip_error"] = repr(e)[:200]
    else:
        try:
            with open(path, "rb") as f:
                tarfile.open(fileobj=f, mode="r:", format=tarfile.PAX_FORMAT).close()
            r["path"] = "tar"
        except tarfile.TarError:
            r["path"] = "legacy"
            streams = []
            with open(path, "rb") as f:
                try:
                    for _ in range(5):
                        start = f.tell()
                        Recorder(f).load()
                        end = f.tell()
                        f.seek(start)
                        streams.append({"offset": start, "length": end - start, "sha256": digest(f.read(end - start))})
                except Exception as e:  # noqa: BLE001
                    r["pickle_error"] = repr(e)[:200]
            r["streams"] = streams
        except Exception as e:  # noqa: BLE001 - tarfile raises more than TarError on odd input
            r["path"] = "tar-crash"
            r["tar_error"] = repr(e)[:200]
    try:
        obj = torch.load(path, pickle_module=SafePickle)
        r["tensors"] = {n: {"dtype": DTYPES.get(t.dtype, str(t.dtype)), "shape": list(t.shape),
                            "sha256": digest(tensor_bytes(t))} for n, t in flatten(obj).items()}
    except Exception as e:  # noqa: BLE001
        r["load_error"] = repr(e)[:200]
    return r


# ---------------------------------------------------------------------------------------------
# Comparison


def compare(ours, theirs):
    """Returns (category, reasons). Categories: agree, both-refuse, strict (we refuse what torch
    loads), lenient (we convert what torch cannot load), DISAGREE."""
    accepted = ours["exit"] == 0
    loaded = "tensors" in theirs
    if not accepted:
        return ("strict" if loaded else "both-refuse"), []
    reasons = []
    kind = ours["kind"]
    if theirs["path"] != kind:
        reasons.append(f"we read it as {kind}, torch as {theirs['path']}")
    if kind == "zip" and theirs["path"] == "zip":
        if "zip_error" in theirs:
            reasons.append("torch's zip reader refuses it: " + theirs["zip_error"])
        else:
            main = next((s for s in ours["streams"] if s["entry"].lower().endswith("/data.pkl")), None)
            if main is None or main.get("sha256") != theirs["data_pkl"]:
                reasons.append("data.pkl differs")
            for key, rec in ours["records"].items():
                got = theirs["records"].get("data/" + key)
                if got is None:
                    got = next((v for n, v in theirs["records"].items() if n.lower() == "data/" + key), None)
                if got != rec.get("sha256"):
                    reasons.append(f"record data/{key} differs")
    if kind == "legacy" and theirs["path"] == "legacy":
        mine = [{"offset": s["offset"], "length": s["length"], "sha256": s.get("sha256")} for s in ours["streams"]]
        read = theirs.get("streams") or []
        # A pickle that Python fails to run (a mutated sys_info) stops torch before the rest:
        # torch then runs less than we read, which is lenient, not another reading.
        stopped = "pickle_error" in theirs and mine[:len(read)] == read
        if mine != read and not stopped:
            reasons.append("legacy pickle boundaries differ")
    if loaded:
        want = theirs["tensors"]
        got = {t["name"]: {"dtype": t["dtype"], "shape": t["shape"], "sha256": t["sha256"]} for t in ours["tensors"]}
        for alias, kept in (ours.get("aliases") or {}).items():
            if kept in got:
                got[alias] = got[kept]
        if got != want:
            missing = sorted(set(want) ^ set(got))[:5]
            differ = sorted(n for n in set(want) & set(got) if want[n] != got[n])[:5]
            reasons.append(f"tensors differ (names only on one side {missing}, contents {differ})")
    elif not reasons:
        return "lenient", ["torch.load fails: " + theirs.get("load_error", "?")]
    return ("DISAGREE" if reasons else "agree"), reasons


# ---------------------------------------------------------------------------------------------


def generate(rng, work, n):
    """Writes about n files into work and returns their paths with how each was made."""
    files = []
    objs = benign_objects(rng)
    bases = []
    for i, obj in enumerate(objs):
        for legacy in (False, True):
            p = os.path.join(work, f"base{i}{'L' if legacy else 'Z'}.pt")
            save(obj, p, legacy, protocol=rng.choice([2, 2, 4]))
            bases.append((p, legacy, obj))
    for p, _, _ in bases:
        files.append((p, "base"))
    while len(files) < n:
        p, legacy, obj = rng.choice(bases)
        with open(p, "rb") as f:
            b = f.read()
        how = "mutated"
        if rng.random() < 0.35:
            other = renamed(obj)
            h = hostile_tar_legacy if legacy else rng.choice(ZIP_HOSTILE)
            b, how = h(b if legacy else zip_records(p), other), h.__name__
            if rng.random() < 0.5:
                b, how = mutate(b, rng), how + "+mutated"
        else:
            b = mutate(b, rng)
        out = os.path.join(work, f"f{len(files):05d}.pt")
        with open(out, "wb") as f:
            f.write(b)
        files.append((out, how))
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", required=True, help="the built torchzip-plan command")
    ap.add_argument("--out", required=True, help="where disagreements and the summary go")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--batch", type=int, default=150)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--max-gib", type=float, default=4, help="address-space limit of this process")
    args = ap.parse_args()
    # A mutated storage size makes torch allocate whatever it says: fail those loads instead.
    limit = int(args.max_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(args.seed)
    counts, hows = {}, {}
    deadline = time.time() + 60 * args.minutes
    rounds = 0
    while time.time() < deadline:
        rounds += 1
        with tempfile.TemporaryDirectory() as work:
            files = generate(rng, work, args.batch)
            res = subprocess.run([args.plan] + [p for p, _ in files], capture_output=True, text=True, check=True)
            plans = [json.loads(line) for line in res.stdout.splitlines()]
            for (path, how), ours in zip(files, plans):
                theirs = torch_reading(path)
                cat, reasons = compare(ours, theirs)
                counts[cat] = counts.get(cat, 0) + 1
                hows.setdefault(how.split("+")[0], {}).setdefault(cat, 0)
                hows[how.split("+")[0]][cat] += 1
                if cat in ("DISAGREE", "lenient"):
                    name = f"{cat}-{hashlib.sha256(open(path, 'rb').read()).hexdigest()[:12]}"
                    shutil.copy(path, os.path.join(args.out, name + ".pt"))
                    with open(os.path.join(args.out, name + ".json"), "w") as f:
                        json.dump({"how": how, "reasons": reasons, "ours": ours, "torch": theirs}, f, indent=1)
        summary = {"seed": args.seed, "rounds": rounds, "files": sum(counts.values()), "counts": counts, "by_origin": hows}
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(json.dumps({"rounds": rounds, "files": summary["files"], "counts": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

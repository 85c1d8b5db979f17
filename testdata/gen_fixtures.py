#!/usr/bin/python3
"""Generate the real-torch fixture set in testdata/torch/, and the model repository testdata/repo/.

Run with Debian's PyTorch (python3-torch, torch 1.13):

    /usr/bin/python3 testdata/gen_fixtures.py

For every fixture NAME.pt this writes NAME.expected.json, recorded from torch itself (the
file is saved, loaded back with torch.load, and the expectation is computed from the loaded
objects; it is also cross-checked against the in-memory objects that were saved). The JSON
schema is documented in testdata/README.md.

Naming and selection follow the converter's policy:
  * if the root object is a dict with a "state_dict" key, only that subtree is converted and
    names are relative to it;
  * otherwise every tensor reachable through dicts, lists and tuples is named by its dotted
    path (dict keys stringified, so int keys become "0"; list/tuple elements by index);
  * a root that is itself a tensor is named "tensor";
  * non-tensor leaves are not listed.
Exact aliases (same storage, storage_offset, shape and stride) are collapsed onto the
bytewise-smallest name; the others appear only in "aliases".

The generator is deterministic (fixed seeds, one intra-op thread), so a re-run rewrites the
zip files byte for byte. Legacy (non-zip) files name their storages by memory address, which
changes on every save, so an existing legacy file is kept when it already loads to exactly the
expected tensors; pass --force to re-save it anyway.
"""

import hashlib
import io
import json
import os
import sys
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "torch")
REPO = os.path.join(HERE, "repo")

MAX_FILE = 100 * 1024
MAX_TOTAL = 1536 * 1024

DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}

FIXTURES = []


def fixture(name, container="zip", protocol=2, via="buffer", error=None):
    """Register a builder returning the object to save as testdata/torch/NAME.pt."""

    def register(fn):
        FIXTURES.append(dict(name=name, build=fn, container=container, protocol=protocol,
                             via=via, error=error))
        return fn

    return register


# ---------------------------------------------------------------------------------------------
# Helpers


def bits(values, np_uint, np_int, torch_dtype):
    """A 1-d tensor of torch_dtype whose elements have exactly the given bit patterns."""
    raw = np.array(values, dtype=np_uint).view(np_int)
    return torch.from_numpy(raw.copy()).view(torch_dtype)


class Net(nn.Module):
    """Small model with Embedding, Conv2d, BatchNorm2d and Linear layers."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 3)
        self.conv = nn.Conv2d(1, 2, kernel_size=3)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))

    def forward(self, img, idx):
        x = torch.relu(self.bn(self.conv(img)))
        return self.head(x) + self.emb(idx).mean(1)


class TiedLM(nn.Module):
    """Embedding tied to the output projection, as in many language models."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.emb.weight


def module_state_dict():
    return Net().state_dict()


# ---------------------------------------------------------------------------------------------
# Fixtures


@fixture("dtypes")
def _dtypes():
    base = torch.randn(2, 3) * 10
    return OrderedDict([
        ("float64", base.to(torch.float64)),
        ("float32", base.clone()),
        ("float16", base.to(torch.float16)),
        ("bfloat16", base.to(torch.bfloat16)),
        ("int64", torch.tensor([[-(2 ** 62), -1, 0], [1, 2 ** 40, 2 ** 63 - 1]], dtype=torch.int64)),
        ("int32", torch.tensor([[-(2 ** 31), -1, 0], [1, 65536, 2 ** 31 - 1]], dtype=torch.int32)),
        ("int16", torch.tensor([[-32768, -1, 0], [1, 256, 32767]], dtype=torch.int16)),
        ("int8", torch.tensor([[-128, -1, 0], [1, 64, 127]], dtype=torch.int8)),
        ("uint8", torch.tensor([[0, 1, 127], [128, 200, 255]], dtype=torch.uint8)),
        ("bool", torch.tensor([[True, False, True], [False, False, True]])),
        ("complex64", torch.complex(base, -base).to(torch.complex64)),
    ])


@fixture("dtypes_legacy", container="legacy")
def _dtypes_legacy():
    return _dtypes()


@fixture("complex128", error="unsupported")
def _complex128():
    return {"ok": torch.randn(3), "c": torch.randn(3, dtype=torch.complex128)}


@fixture("quantized", error="unsupported")
def _quantized():
    return {
        "ok": torch.randn(3),
        "q": torch.quantize_per_tensor(torch.randn(4), 0.1, 10, torch.quint8),
        "qc": torch.quantize_per_channel(torch.randn(2, 3), torch.tensor([0.1, 0.2], dtype=torch.float64),
                                         torch.tensor([0, 1]), 0, torch.qint8),
    }


@fixture("scalars")
def _scalars():
    return {
        "f64": torch.tensor(2.5, dtype=torch.float64),
        "f32": torch.tensor(1.5),
        "f16": torch.tensor(-0.25, dtype=torch.float16),
        "bf16": torch.tensor(3.0, dtype=torch.bfloat16),
        "i64": torch.tensor(7),
        "i32": torch.tensor(-7, dtype=torch.int32),
        "u8": torch.tensor(200, dtype=torch.uint8),
        "bool": torch.tensor(True),
        "c64": torch.tensor(1 + 2j, dtype=torch.complex64),
        # a 0-dim view into the middle of a larger storage
        "elem": torch.arange(10, dtype=torch.float32)[4],
    }


@fixture("empty")
def _empty():
    base = torch.arange(8, dtype=torch.float32)
    return {
        "e0": torch.empty(0),
        "e2x0x3": torch.empty(2, 0, 3),
        "i64_0x4": torch.zeros(0, 4, dtype=torch.int64),
        "bool0": torch.empty(0, dtype=torch.bool),
        "bf16_0": torch.empty(0, dtype=torch.bfloat16),
        # empty slice of a non-empty storage: the whole 8-element storage is serialized
        "slice_empty": base[3:3],
    }


@fixture("special_floats")
def _special_floats():
    # +0, -0, NaN (quiet), NaN (payload), -NaN, +Inf, -Inf, min subnormal, max subnormal,
    # min normal, max finite, 1.0
    f32 = [0x00000000, 0x80000000, 0x7FC00000, 0x7FA00001, 0xFFC00000, 0x7F800000, 0xFF800000,
           0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x3F800000]
    f16 = [0x0000, 0x8000, 0x7E00, 0x7D01, 0xFE00, 0x7C00, 0xFC00, 0x0001, 0x03FF, 0x0400,
           0x7BFF, 0x3C00]
    bf16 = [0x0000, 0x8000, 0x7FC0, 0x7FA1, 0xFFC0, 0x7F80, 0xFF80, 0x0001, 0x007F, 0x0080,
            0x7F7F, 0x3F80]
    f64 = [0x0000000000000000, 0x8000000000000000, 0x7FF8000000000000, 0x7FF4000000000001,
           0xFFF8000000000000, 0x7FF0000000000000, 0xFFF0000000000000, 0x0000000000000001,
           0x000FFFFFFFFFFFFF, 0x0010000000000000, 0x7FEFFFFFFFFFFFFF, 0x3FF0000000000000]
    return {
        "f32": bits(f32, np.uint32, np.int32, torch.float32),
        "f16": bits(f16, np.uint16, np.int16, torch.float16),
        "bf16": bits(bf16, np.uint16, np.int16, torch.bfloat16),
        "f64": bits(f64, np.uint64, np.int64, torch.float64),
    }


def _views_obj():
    x = torch.randn(10)
    m = torch.randn(4, 6)
    w = torch.randn(3, 5)
    p = torch.randn(2, 3, 4)
    v = torch.randn(3)
    c = torch.randn(3, 1)
    s = torch.tensor(4.0)
    return {
        "x": x,                          # whole storage
        "x_tail": x[3:],                 # storage offset 3, overlaps "x"
        "m_cols": m[:, ::2],             # stride [6, 2]
        "m_col1": m[:, 1],               # offset 1, stride [6]
        "w_t": w.t(),                    # stride [1, 5]
        "p_perm": p.permute(2, 0, 1),    # stride [1, 12, 4]
        "v_exp": v.expand(4, 3),         # stride [0, 1]
        "c_exp": c.expand(3, 4),         # stride [1, 0]
        "s_exp": s.expand(2, 2),         # stride [0, 0]
    }


@fixture("views")
def _views():
    return _views_obj()


@fixture("views_legacy", container="legacy")
def _views_legacy():
    return _views_obj()


@fixture("view_alone")
def _view_alone():
    big = torch.randn(100)
    # only the view is saved, but torch serializes the whole 100-element storage
    return {"tail": big[5:9]}


@fixture("overlap")
def _overlap():
    s = torch.randn(12)
    return {
        "first": s[0:6],
        "second": s[3:9],
        "evens": s[::2],
        "grid": s.view(3, 4)[:, 1:3],
    }


@fixture("tied")
def _tied():
    t = torch.randn(3, 4)
    return {
        "w": t,
        "w_same_object": t,          # same tensor object twice
        "w_view": t.view(t.shape),   # distinct object, same storage/offset/shape/stride
        "w_detach": t.detach(),      # distinct object, same storage/offset/shape/stride
        "a_first": t[:],             # bytewise smallest name of the group: kept
        "w_rows": t[1:],             # overlaps, different offset/shape: not an alias
        "w_reshaped": t.view(12),    # same storage and offset, different shape: not an alias
        "other": t.clone(),          # equal bytes, different storage: not an alias
    }


@fixture("tied_module")
def _tied_module():
    return TiedLM().state_dict()


@fixture("parameters_keep_vars")
def _parameters_keep_vars():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    return model.state_dict(keep_vars=True)


@fixture("parameter_in_dict")
def _parameter_in_dict():
    return {
        "p": nn.Parameter(torch.randn(3, 2)),
        "frozen": nn.Parameter(torch.randn(2), requires_grad=False),
        "t": torch.randn(2),
    }


@fixture("module_state_dict")
def _module_state_dict():
    return module_state_dict()


@fixture("module_state_dict_p4", protocol=4)
def _module_state_dict_p4():
    return module_state_dict()


@fixture("module_state_dict_legacy_p2", container="legacy", protocol=2)
def _module_state_dict_legacy_p2():
    return module_state_dict()


@fixture("module_state_dict_legacy_p4", container="legacy", protocol=4)
def _module_state_dict_legacy_p4():
    return module_state_dict()


@fixture("training_checkpoint")
def _training_checkpoint():
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.999))
    img = torch.randn(4, 1, 4, 4)
    idx = torch.randint(0, 10, (4, 2))
    target = torch.randn(4, 3)
    loss = nn.functional.mse_loss(model(img, idx), target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {
        "epoch": 3,
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "hparams": {"lr": 0.001, "betas": (0.9, 0.999), "name": "x"},
        "loss": 0.5,
    }


@fixture("nested")
def _nested():
    return {
        "a": {"b": [torch.randn(2), torch.randn(3)]},
        "c": {0: torch.randn(1), 1: (torch.arange(3), torch.ones(2, dtype=torch.bool))},
        "d": [[torch.randn(2, 2)], {"e": torch.zeros(1, dtype=torch.int8)}],
        "meta": {"name": "x", "n": 3, "f": 0.5, "none": None, "tup": (1, "two")},
    }


@fixture("mymodel", via="path")
def _mymodel():
    # saved with torch.save(obj, "mymodel.pt"): the zip's inner folder is "mymodel/"
    return {"weight": torch.randn(2, 3), "bias": torch.randn(2)}


@fixture("my.model.v2", via="path")
def _my_model_v2():
    # saved to "my.model.v2.pt": torch strips only the last extension, folder "my.model.v2/"
    return {"weight": torch.randn(2, 2)}


@fixture("root_tensor")
def _root_tensor():
    return torch.randn(2, 3)


@fixture("root_list")
def _root_list():
    return [torch.randn(2), torch.arange(3), "not a tensor", torch.ones(1, dtype=torch.float16)]


@fixture("many_tensors")
def _many_tensors():
    # 150 storages of their own ("w") plus 150 one-element views of one shared storage ("b"):
    # a long pickle stream with many persistent ids and memo entries
    shared = torch.arange(150, dtype=torch.int16)
    return {"blocks": [{"w": torch.randn(2), "b": shared[i:i + 1]} for i in range(150)]}


# ---------------------------------------------------------------------------------------------
# Expectations


def select(obj):
    """Apply the converter's selection rule: a root dict with "state_dict" selects that subtree."""
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"]
    return obj


def walk(obj):
    """(name, tensor) pairs in traversal order, per the converter's naming policy."""
    out = []
    if isinstance(obj, torch.Tensor):
        return [("tensor", obj)]

    def rec(o, path):
        if isinstance(o, torch.Tensor):
            out.append((".".join(path), o))
        elif isinstance(o, dict):
            for k, v in o.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise TypeError("fixture uses an unsupported key type: %r" % (k,))
                rec(v, path + [str(k)])
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                rec(v, path + [str(i)])

    rec(obj, [])
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in fixture: %r" % names)
    return out


def tensor_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def storage_id(t):
    # the UntypedStorage's C pointer: what torch.save uses to assign storage keys
    return t.storage()._storage._cdata


def describe(obj):
    """(tensors, aliases) for obj, per the schema in testdata/README.md."""
    pairs = walk(select(obj))
    groups = OrderedDict()
    for name, t in pairs:
        key = (storage_id(t), t.dtype, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        groups.setdefault(key, []).append((name, t))
    tensors, aliases = [], {}
    for members in groups.values():
        members.sort(key=lambda m: m[0].encode("utf-8"))
        kept, t = members[0]
        for dropped, _ in members[1:]:
            aliases[dropped] = kept
        if t.dtype not in DTYPE_NAMES:
            raise TypeError("%s: dtype %s has no safetensors name" % (kept, t.dtype))
        tensors.append(OrderedDict([
            ("name", kept),
            ("dtype", DTYPE_NAMES[t.dtype]),
            ("shape", list(t.shape)),
            ("sha256", hashlib.sha256(tensor_bytes(t)).hexdigest()),
            ("storage_offset", t.storage_offset()),
            ("stride", list(t.stride())),
        ]))
    tensors.sort(key=lambda e: e["name"].encode("utf-8"))
    return tensors, OrderedDict(sorted(aliases.items(), key=lambda kv: kv[0].encode("utf-8")))


def file_facts(path):
    """(container, pickle protocol of the main pickle stream, zip inner folder or None)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")]
            assert len(pkl) == 1, pkl
            head = z.read(pkl[0])[:2]
            prefix = pkl[0][: -len("/data.pkl")]
        container = "zip"
    else:
        with open(path, "rb") as f:
            head = f.read(2)  # legacy: every pickle in the file uses the same protocol
        prefix = None
        container = "legacy"
    assert head[0] == 0x80, "no PROTO opcode in %s" % path
    return container, head[1], prefix


def dump_json(exp):
    """JSON with one tensor per line, for readable diffs."""
    lines = ["{"]
    lines.append('  "source": %s,' % json.dumps(exp["source"]))
    lines.append('  "container": %s,' % json.dumps(exp["container"]))
    lines.append('  "protocol": %d,' % exp["protocol"])
    if exp["tensors"]:
        lines.append('  "tensors": [')
        body = ["    " + json.dumps(t) for t in exp["tensors"]]
        lines.append(",\n".join(body))
        lines.append("  ],")
    else:
        lines.append('  "tensors": [],')
    lines.append('  "aliases": %s,' % json.dumps(exp["aliases"]))
    lines.append('  "error": %s' % json.dumps(exp["error"]))
    lines.append("}")
    return "\n".join(lines) + "\n"


def unchanged_legacy(path, fx, obj):
    """Whether an existing legacy file already holds exactly what obj would be saved as."""
    if not os.path.exists(path):
        return False
    try:
        if file_facts(path)[:2] != (fx["container"], fx["protocol"]):
            return False
        return describe(torch.load(path)) == describe(obj)
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# repo/: a small Hugging Face-style model repository for batch conversion


def save_zip(obj, path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def write_safetensors(path, tensors):
    """A safetensors file written by hand (the safetensors package is not in Debian's torch)."""
    header, data = OrderedDict(), b""
    for name, t in tensors.items():
        raw = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + data)


def gen_repo():
    """Write testdata/repo/: a sharded checkpoint (3 shards and pytorch_model.bin.index.json),
    configs, a Lightning checkpoint, a legacy-format file and a safetensors file to copy."""
    torch.manual_seed(12)
    os.makedirs(os.path.join(REPO, "checkpoints"), exist_ok=True)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.LayerNorm(2))
    sd = model.state_dict()
    names = list(sd)
    shards = [names[0:2], names[2:4], names[4:]]
    weight_map, total = OrderedDict(), 0
    for i, part in enumerate(shards, 1):
        shard = "pytorch_model-%05d-of-%05d.bin" % (i, len(shards))
        save_zip(OrderedDict((k, sd[k]) for k in part), os.path.join(REPO, shard))
        for k in part:
            weight_map[k] = shard
            total += sd[k].numel() * sd[k].element_size()
    index = OrderedDict([("metadata", {"total_size": total}), ("weight_map", weight_map)])
    write_text(os.path.join(REPO, "pytorch_model.bin.index.json"), json.dumps(index, indent=2) + "\n")
    write_text(os.path.join(REPO, "config.json"),
               json.dumps({"architectures": ["TinyModel"], "hidden_size": 3}, indent=2) + "\n")
    write_text(os.path.join(REPO, "tokenizer.json"),
               json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0}}}) + "\n")
    write_text(os.path.join(REPO, "vocab.txt"), "[PAD]\n[UNK]\na\n")  # starts with "[", no opcode
    write_text(os.path.join(REPO, "merges.txt"), "]a b\n")  # starts with EMPTY_LIST, then junk

    lightning = OrderedDict([
        ("epoch", 3), ("global_step", 120), ("pytorch-lightning_version", "1.9.0"),
        ("state_dict", OrderedDict(("model." + k, v) for k, v in sd.items())),
        ("optimizer_states", [{"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]}]),
        ("lr_schedulers", []),
    ])
    save_zip(lightning, os.path.join(REPO, "checkpoints", "last.ckpt"))

    legacy_path = os.path.join(REPO, "legacy.pt")
    legacy = OrderedDict([("w", torch.arange(6, dtype=torch.float32).reshape(2, 3))])
    fx = dict(container="legacy", protocol=2)
    if not unchanged_legacy(legacy_path, fx, legacy):
        torch.save(legacy, legacy_path, _use_new_zipfile_serialization=False)
    assert file_facts(legacy_path)[0] == "legacy"

    write_safetensors(os.path.join(REPO, "adapter.safetensors"),
                      OrderedDict([("lora.a", torch.ones(2, 2)), ("lora.b", torch.zeros(2))]))
    print("repo/: %d shards, %d tensor bytes, lightning, legacy, configs" % (len(shards), total))


def main():
    force = "--force" in sys.argv[1:]
    if sys.byteorder != "little":
        sys.exit("run on a little-endian machine")
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    total = 0
    for fx in FIXTURES:
        name = fx["name"]
        torch.manual_seed(zlib.crc32(name.encode()))
        np.random.seed(zlib.crc32(name.encode()) & 0x7FFFFFFF)
        obj = fx["build"]()
        path = os.path.join(OUT, name + ".pt")
        kwargs = {"pickle_protocol": fx["protocol"]}
        if fx["container"] == "legacy":
            kwargs["_use_new_zipfile_serialization"] = False
        if fx["container"] == "legacy" and not force and unchanged_legacy(path, fx, obj):
            pass  # keep the file: a re-save would only change the address-based storage keys
        elif fx["via"] == "path":
            torch.save(obj, path, **kwargs)
        else:
            buf = io.BytesIO()
            torch.save(obj, buf, **kwargs)
            with open(path, "wb") as f:
                f.write(buf.getvalue())

        container, protocol, prefix = file_facts(path)
        assert container == fx["container"], (name, container)
        assert protocol == fx["protocol"], (name, protocol)
        if container == "zip":
            want = name if fx["via"] == "path" else "archive"
            assert prefix == want, (name, prefix)

        loaded = torch.load(path)
        if fx["error"] is None:
            tensors, aliases = describe(loaded)
            assert (tensors, aliases) == describe(obj), "%s: round trip changed the tensors" % name
        else:
            tensors, aliases = [], OrderedDict()
            walk(select(loaded))  # still loadable by torch
        exp = OrderedDict([
            ("source", name + ".pt"),
            ("container", container),
            ("protocol", protocol),
            ("tensors", tensors),
            ("aliases", aliases),
            ("error", fx["error"]),
        ])
        with open(os.path.join(OUT, name + ".expected.json"), "w") as f:
            f.write(dump_json(exp))
        size = os.path.getsize(path)
        assert size < MAX_FILE, "%s is %d bytes" % (name, size)
        total += size
        print("%-32s %-6s p%d %3d tensors %2d aliases %7d bytes%s" % (
            name + ".pt", container, protocol, len(tensors), len(aliases), size,
            "  error=" + fx["error"] if fx["error"] else ""))
    assert total < MAX_TOTAL, "fixtures total %d bytes" % total
    print("%d fixtures, %d bytes of checkpoints, torch %s" % (len(FIXTURES), total, torch.__version__))
    gen_repo()


if __name__ == "__main__":
    main()

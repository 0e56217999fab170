"""Seeded fuzzing of the untrusted files radio reads: exports (`radio.load`) and webdataset shards.

Exports: byte flips, truncations and JSON edits of a tiny exported student must end in an ExportError or in a
model whose outputs on a fixed input equal the original's exactly (with the checksums present); with
consistent checksums (a hostile but well-formed export) a bad value or tensor is an ExportError, and a model
that loads computes finite outputs; without checksums a load that succeeds says it is unverified.
Shards: flips, truncations and member edits must never crash the readers: bad samples are skipped and counted.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import traceback
import warnings
from pathlib import Path

import pytest
import torch

from radio.export import ExportError, UnverifiedExportWarning, config_sha256, load, save_model
from tests.helpers import tiny_student

CONFIG, WEIGHTS = "config.json", "model.safetensors"
X = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
VALUES = [None, True, False, 0, -1, 1, 2, 3, 7, 16.0, 0.5, -0.5, 1e308, 10 ** 12, 2 ** 63, "", "2", "x", [], [0],
          [0, 0, 0], [1, 2, 3, 4], {}, {"a": 1}, float("nan"), float("inf")]


def _outputs(model) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(X)
        adapted = model(X, adaptors=list(model.adaptors))
    return [out.summary, out.features] + [t for a in adapted.values() for t in (a.summary, a.features)
                                          if t is not None]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    model = tiny_student()
    d = save_model(model, tmp_path_factory.mktemp("fuzz") / "orig")
    return {"config": (d / CONFIG).read_bytes(), "weights": (d / WEIGHTS).read_bytes(), "ref": _outputs(model)}


# ---- mutations ---------------------------------------------------------------------------------------------------
def _flip(data: bytes, rng: random.Random, head: int | None = None) -> bytes:
    b = bytearray(data)
    pos = rng.randrange(head if head else len(b))
    b[pos] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
    return bytes(b)


def _paths(node, prefix=()):
    """Every (container, key) of a JSON tree, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


def _json_edit(cfg: dict, rng: random.Random) -> str:
    """Edit `cfg` in place at a random place; returns what was done."""
    path = rng.choice(list(_paths(cfg)))
    parent = cfg
    for k in path[:-1]:
        parent = parent[k]
    op = rng.random()
    if op < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"del {path}"
    if op < 0.25 and isinstance(parent, dict):
        parent[f"{path[-1]}_x"] = 1
        return f"add {path}_x"
    value = rng.choice(VALUES)
    parent[path[-1]] = value
    return f"{path} = {value!r}"


def _tensor_edit(state: dict, rng: random.Random) -> str:
    """An edit of the weights that no export of this config has (must always be an ExportError)."""
    key = rng.choice(sorted(state))
    t = state[key]
    kind = rng.choice(["dtype", "shape", "drop", "extra", "nan", "inf"] if t.is_floating_point()
                      else ["dtype", "shape", "drop", "extra"])
    if kind == "dtype":
        other = [d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.uint8,
                             torch.bool) if d != t.dtype]
        state[key] = t.to(rng.choice(other))
    elif kind == "shape":
        state[key] = torch.zeros(t.numel() + 1, dtype=t.dtype) if rng.random() < 0.5 else t.reshape(1, *t.shape)
    elif kind == "drop":
        del state[key]
    elif kind == "extra":
        state[key + "_x"] = torch.zeros(2)
    else:
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = float(kind)
        state[key] = t
    return f"{kind} {key}"


def _state(weights: bytes) -> dict:
    from safetensors.torch import load

    return dict(load(weights))


def _safetensors_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    return save(state, metadata={"format": "pt"})


def _write(d: Path, config: bytes, weights: bytes) -> None:
    d.mkdir(exist_ok=True)
    (d / CONFIG).write_bytes(config)
    (d / WEIGHTS).write_bytes(weights)


def _checksummed(cfg: dict, weights: bytes) -> bytes:
    cfg = {k: v for k, v in cfg.items() if k not in ("config_sha256", "weights_sha256")}
    cfg["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    try:
        cfg["config_sha256"] = config_sha256(cfg)
    except ValueError:  # NaN or infinity: no canonical JSON, so no checksum (the load then warns)
        pass
    return json.dumps(cfg).encode()


# ---- export fuzzing ------------------------------------------------------------------------------------------------
def _load(d: Path, **kw):
    """(model or None if ExportError, unverified-warning seen)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            model = load(d, **kw)
        except ExportError:
            model = None
    return model, any(issubclass(w.category, UnverifiedExportWarning) for w in seen)


def test_fuzzed_exports_fail_with_export_error_or_load_the_same_model(export, tmp_path, capsys):
    d, ref = tmp_path / "case", export["ref"]
    header = 8 + int.from_bytes(export["weights"][:8], "little")
    stats = {m: {"cases": 0, "rejected": 0, "loaded": 0} for m in ("checksummed", "consistent", "unverified")}
    failures = []

    def case(mode: str, i: int, what: str, check) -> None:
        stats[mode]["cases"] += 1
        try:
            model, unverified = _load(d, **({"verify": False} if mode == "unverified" and i % 2 else {}))
            stats[mode]["rejected" if model is None else "loaded"] += 1
            problem = model is not None and check(model, unverified)
        except Exception:  # anything but an ExportError escaping radio.load is a failure
            problem = traceback.format_exc(limit=-3)
        if problem:
            failures.append(f"{mode} #{i} ({what}): {problem}")

    def same(model, unverified):
        out = _outputs(model)
        return None if all(torch.equal(a, b) for a, b in zip(out, ref)) and len(out) == len(ref) else "outputs differ"

    # 1. the export as written (both checksums): flips, truncations and JSON edits
    for i in range(220):
        rng = random.Random(i)
        config, weights = export["config"], export["weights"]
        kind = ["flip config", "flip weights", "truncate", "json"][i % 4] if i < 200 else "flip header"
        if kind == "flip config":
            config = _flip(config, rng)
        elif kind in ("flip weights", "flip header"):
            weights = _flip(weights, rng, header if kind == "flip header" else None)
        elif kind == "truncate":
            if rng.random() < 0.5:
                config = config[:rng.randrange(len(config))]
            else:
                weights = weights[:rng.randrange(len(weights))]
        else:
            cfg = json.loads(config)
            kind = _json_edit(cfg, rng)
            config = json.dumps(cfg, indent=rng.choice([None, 2])).encode()
        _write(d, config, weights)
        case("checksummed", i, kind, same)

    # 2. consistent checksums over edited content (a well-formed but hostile export): the checks themselves
    def finite(model, unverified):
        return None if all(bool(torch.isfinite(t).all()) for t in _outputs(model)) else "non-finite outputs"

    for i in range(120):
        rng = random.Random(1000 + i)
        cfg, weights = json.loads(export["config"]), export["weights"]
        if i % 4 == 3:
            state = _state(export["weights"])
            kind = _tensor_edit(state, rng)
            weights = _safetensors_bytes(state)
            check = (lambda m, u, k=kind: f"loaded despite {k}")
        else:
            kind = _json_edit(cfg, rng)
            check = finite
        _write(d, _checksummed(cfg, weights), weights)
        case("consistent", i, kind, check)

    # 3. no checksums: flips of the weights (half of them in its header) load only with the unverified warning
    for i in range(60):
        rng = random.Random(2000 + i)
        cfg = {k: v for k, v in json.loads(export["config"]).items() if k not in ("weights_sha256", "config_sha256")}
        weights = _flip(export["weights"], rng, header if i % 2 == 0 else None)
        _write(d, json.dumps(cfg).encode(), weights)
        case("unverified", i, "flip", lambda m, unverified, i=i: None if unverified or i % 2 else "no warning")
        try:  # and verify=True refuses it
            load(d, verify=True)
            failures.append(f"unverified #{i}: loaded with verify=True")
        except ExportError:
            pass

    total = {k: sum(s[k] for s in stats.values()) for k in ("cases", "rejected", "loaded")}
    with capsys.disabled():
        print(f"\nexport fuzz: {stats}; total {total}; held {total['cases'] - len(failures)}")
    assert not failures, "\n".join(failures[:10])
    assert total["cases"] == 400
    # both outcomes occur in each mode: the fuzz reaches the checks and the models that pass them
    assert all(s["rejected"] and s["loaded"] for s in stats.values()), stats


# ---- shard fuzzing -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    from radio.data.synth import write_synth

    out = tmp_path_factory.mktemp("fuzz_shard")
    (url,) = write_synth(out, 6, val_count=0, size=32, shard_size=6, progress=False)["train"]
    with tarfile.open(url) as tf:
        keys = {m.name.split(".", 1)[0] for m in tf if m.isfile()}
    return Path(url).read_bytes(), keys


def _read_indexed(url: str):
    """The training reader: index scan, random access, decode, training transform. -> (ok keys, bad, faults)."""
    from radio.data.index import ShardIndex
    from radio.data.shards import SampleError, decode_sample
    from radio.data.transforms import train_transform

    index = ShardIndex.build([url], progress=False)
    transform = train_transform(32, 0.35)
    ok, bad = [], 0
    for i in range(len(index)):
        try:
            s = decode_sample(index.read(i), need_mask=True)
            assert transform(s.image).shape == (3, 32, 32)
            ok.append(s.key)
        except SampleError:
            bad += 1
    assert len(ok) + bad == len(index)
    return ok, bad, index.faults


def _read_sequential(url: str):
    """The sequential reader of evaluation and the feature cache: webdataset with an ErrorCounter handler."""
    from radio.data.shards import ErrorCounter, SampleError, decode_sample, iter_raw_samples
    from radio.data.transforms import eval_transform

    errors = ErrorCounter()
    transform = eval_transform(32)
    ok = []
    for raw in iter_raw_samples([url], handler=errors):
        try:
            s = decode_sample(raw, need_mask="seg.png" in raw)
            assert transform(s.image).shape == (3, 32, 32)
            ok.append(s.key)
        except SampleError as e:
            errors(e)
    return ok, errors.total


def _edit_member(data: bytes, rng: random.Random, label=None) -> tuple[bytes, str]:
    """Rewrite the tar with one member's content replaced: a json member whose label is `label`, or (None) an
    image member cut short or replaced by garbage."""
    src = tarfile.open(fileobj=io.BytesIO(data))
    members = [(m, src.extractfile(m).read()) for m in src if m.isfile()]
    ext = "json" if label is not None else rng.choice(["png", "seg.png"])
    j = rng.choice([k for k, (m, _) in enumerate(members) if m.name.split(".", 1)[1] == ext])
    m, content = members[j]
    if label is not None:
        content = json.dumps({"label": label}).encode()
    else:
        content = content[:rng.randrange(len(content))] if rng.random() < 0.5 else rng.randbytes(64)
    members[j] = (m, content)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        for info, body in members:
            info.size = len(body)
            dst.addfile(info, io.BytesIO(body))
    return out.getvalue(), f"member {m.name} = {content[:40]!r}"


def test_fuzzed_shards_never_crash_the_readers(shard, tmp_path, capsys):
    data, keys = shard
    url = str(tmp_path / "000000.tar")
    stats = {"cases": 0, "clean": 0, "with_bad_samples_or_faults": 0}
    failures = []
    labels = VALUES[1:] + [{"label": 1}]  # every odd value once (None is "no label", which is allowed)
    for i in range(100 + 2 * len(labels)):
        rng = random.Random(3000 + i)
        kind = ["flip", "flip", "truncate"][i % 3] if i < 100 else "member"
        if kind == "flip":
            fuzzed = _flip(data, rng)
        elif kind == "truncate":
            fuzzed = data[:rng.randrange(len(data))]
        else:
            label = labels[(i - 100) // 2] if i % 2 == 0 else None
            fuzzed, kind = _edit_member(data, rng, label)
        Path(url).write_bytes(fuzzed)
        stats["cases"] += 1
        try:
            ok, bad, faults = _read_indexed(url)
            ok_seq, bad_seq = _read_sequential(url)
            assert set(ok) <= keys and set(ok_seq) <= keys, (ok, ok_seq)  # tar headers carry checksums
            stats["clean" if not bad and not faults and not bad_seq else "with_bad_samples_or_faults"] += 1
        except Exception:
            failures.append(f"shard #{i} ({kind}): {traceback.format_exc(limit=-3)}")
    with capsys.disabled():
        print(f"\nshard fuzz: {stats}; held {stats['cases'] - len(failures)}")
    assert not failures, "\n".join(failures[:10])
    assert stats["cases"] == 152 and stats["with_bad_samples_or_faults"] > 0

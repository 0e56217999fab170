"""The model card (`README.md`) of an export: architecture, teachers, usage per format, eval results.

Eval results come from a `report.json` written by `radio eval` / `radio demo` (`probes: {probe: {model:
{label_field: {metric: value}}}}`): passed explicitly, or found next to the checkpoint's run.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from radio.export.format import ExportError, read_json

REPORT_NAME = "report.json"
# How far above the checkpoint's folder to look for a report: runs/x/run/logs/version_0/checkpoints/last.ckpt
# has its run folder 3 levels up and the folder holding the run (where `radio demo` writes report.json) 4 up.
REPORT_SEARCH_DEPTH = 5
PRIMARY_METRICS = ("top1", "miou", "mIoU", "accuracy", "acc", "fidelity", "score")


def find_report(ckpt_path: str | Path) -> Path | None:
    """The nearest `report.json` in the checkpoint's folder or up to REPORT_SEARCH_DEPTH - 1 folders above,
    written after the checkpoint (an older one, e.g. left by a previous run in the same folder, is not about
    it)."""
    ckpt = Path(ckpt_path).resolve()
    folder, written = ckpt.parent, ckpt.stat().st_mtime
    for _ in range(REPORT_SEARCH_DEPTH):
        candidate = folder / REPORT_NAME
        if candidate.is_file() and candidate.stat().st_mtime >= written:
            return candidate
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def read_report(path: str | Path) -> dict[str, Any]:
    report = read_json(path, "--report")
    if not isinstance(report, dict) or not isinstance(report.get("probes", {}), dict):
        raise ExportError(f"--report {str(path)!r}: expected an object with 'probes' "
                          "({probe: {model: {label_field: {metric: value}}}})")
    return report


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _cell(result: Any) -> str:
    if not isinstance(result, dict):
        return _num(result)
    for k in PRIMARY_METRICS:
        if k in result:
            return _num(result[k])
    return ", ".join(f"{k} {_num(v)}" for k, v in result.items() if isinstance(v, (int, float)))


def eval_results_markdown(report: dict[str, Any]) -> str:
    """One table per probe: a row per model, a column per label field, the probe's main metric per cell."""
    lines = ["## Evaluation", ""]
    if report.get("summary"):
        lines += [str(report["summary"]), ""]
    for probe, per_model in (report.get("probes") or {}).items():
        if not isinstance(per_model, dict) or not per_model:
            continue
        fields = sorted({f for r in per_model.values() if isinstance(r, dict) for f in r})
        lines += [f"### {probe}", "", "| model | " + " | ".join(fields) + " |",
                  "|---|" + "---|" * len(fields)]
        for name, r in per_model.items():
            r = r if isinstance(r, dict) else {}
            lines.append(f"| {name} | " + " | ".join(_cell(r[f]) if f in r else "-" for f in fields) + " |")
        first = next((r for r in per_model.values() if isinstance(r, dict)), {})
        chance = {f: v["chance"] for f, v in first.items() if isinstance(v, dict) and "chance" in v}
        if chance:
            lines += ["", "Chance: " + ", ".join(f"{f} {_num(c)}" for f, c in chance.items())]
        lines.append("")
    return "\n".join(lines)


def _usage(config: dict[str, Any], fmt: str) -> str:
    names = ", ".join(repr(t["name"]) for t in config["teachers"] if t.get("has_adaptor", True))
    adaptors = (f"\nper_teacher = model(images, adaptors=[{names}])   # name -> (summary, features) in the "
                "teacher's own space (inverse normalizer applied)") if names else ""
    if fmt == "onnx":
        outs = ", ".join(config.get("onnx", {}).get("outputs", []))
        step, top = config["resolution_step"], config["student"]["max_resolution"]
        return f"""```python
import onnxruntime as ort
session = ort.InferenceSession("THIS_DIRECTORY/model.onnx")
# images: float32 (B, 3, H, W) in [0, 1]; H, W multiples of {step} up to {top}
outputs = session.run(None, {{"images": images}})
# outputs, in order: {outs}
```
"""
    load = ("from transformers import AutoModel\nmodel = AutoModel.from_pretrained(\"THIS_DIRECTORY\")"
            "   # after `import radio`; no trust_remote_code" if fmt == "hf"
            else "model = radio.load(\"THIS_DIRECTORY\")")
    return f"""```python
import radio
{load}
out = model(images)             # images (B, 3, H, W) in [0, 1]; out.summary (B, C), out.features (B, N, C)
grid = model(images, feature_fmt="NCHW").features            # (B, C, h, w){adaptors}
layers = model.forward_intermediates(images, indices=4)       # the last 4 blocks
```

timm: `timm.create_model("radio_student", pretrained=True,
pretrained_cfg_overlay=dict(file="THIS_DIRECTORY"))` builds the backbone (after `import radio`); it takes
normalized images (mean/std above).
"""


def model_card(config: dict[str, Any], fmt: str = "safetensors",
               report: dict[str, Any] | None = None) -> str:
    """Markdown model card for a native export config (see radio.export.write.export_config)."""
    s = config["student"]
    arch = (f"{s['arch']} (width {s.get('embed_dim')}, depth {s.get('depth')}, heads {s.get('num_heads')}), "
            f"patch {s['patch_size']}")
    rows = "\n".join(f"| {t['name']} | {t['summary_dim'] or '-'} | {t['feature_dim']} | {t['patch_size']} | "
                     f"{t['normalizer']} | {'yes' if t.get('has_adaptor', True) else 'dropped'} |"
                     for t in config["teachers"])
    budget = (config.get("defaults") or {}).get("num_tokens")
    tome = config.get("tome") or {}
    merging = (f"\n- default in-network token merging: r = {tome['r']} per block ({tome.get('schedule')}); "
               "`model.set_token_merging()` turns it off" if tome.get("r") else "")
    prov = config.get("provenance") or {}
    source = f"\n- trained: {prov['checkpoint']} (step {prov.get('step')})" if prov.get("checkpoint") else ""
    onnx_check = ""
    check = (config.get("onnx") or {}).get("check")
    if check:
        onnx_check = "\n- onnxruntime vs PyTorch, max abs difference: " + ", ".join(
            f"{size} {r['max_abs_diff']:.2e}" for size, r in check.items())
    card = f"""---
library_name: radio
tags: [radio, vision, feature-extraction, distillation]
pipeline_tag: image-feature-extraction
---
# radio student

Agglomerative student distilled by radio from {len(config['teachers'])} teacher(s). Export format: {fmt}.

- architecture: {arch}
- input: float RGB in [0, 1], height and width multiples of {config['resolution_step']} (up to \
{s['max_resolution']}); the model normalizes with mean {s['mean']}, std {s['std']}
- default output-token budget: {budget or 'none (full patch grid)'}{merging}
- format version: {config['format_version']}{source}{onnx_check}

| teacher | summary dim | feature dim | teacher patch | normalizer | adaptor |
|---|---|---|---|---|---|
{rows}

{_usage(config, fmt)}"""
    if report:
        card += "\n" + eval_results_markdown(report)
    return card

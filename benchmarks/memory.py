"""Memory: peak resident memory of one training step, for the demo and for a ViT-B student at 224 px, on the CPU.

    PYTHONPATH=$PWD python benchmarks/memory.py [--threads 2] [--vitb-batch 8]

Each case runs in a fresh process (so no case inherits another's allocator state), which: notes its resident set
(VmRSS) after the imports (the Python + torch baseline); builds the DistillModule (student, adaptors, normalizers,
teachers) and notes VmRSS again; runs one warm-up training step (benchmarks/_bench.train_step: teacher targets,
normalizer statistics fitted and frozen, student forward/backward, AdamW, whose state is allocated now); then
resets the kernel's high-water mark (`echo 5 > /proc/self/clear_refs`) and runs one more step, whose peak is the
high-water mark (VmHWM) afterwards. Printed per case: the parameter counts, the analytic resident model state
(student weights, gradients and two AdamW moments at 16 bytes per parameter + teacher weights at 4), the
measured RSS at each point, and last the ratio of the step's peak above the baseline to that model state (what
activations and allocator caching add on top of the model's own state).

Cases: the demo's two stages (recipes/demo.yaml: 32 x 64 px; 24 x 128 + 16 x 64 px), and a ViT-B/16 student
(RADIOModel vit_base, register multiple 8) with two real-size randomly initialised teachers (open_clip ViT-B-16,
timm DINOv2 ViT-B/14) at 224 px, batch 8, float32; images are random tensors (memory does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench

MIB = 2 ** 20


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def build_case(case: str, vitb_batch: int):
    """(module, batch, label) for a case name: demo0, demo1 or vitb."""
    from data_loading import VITB_STUDENT, VITB_TEACHERS

    from radio.data.batch import Partition, TrainBatch
    from radio.train.module import DistillModule

    g = torch.Generator().manual_seed(0)
    if case.startswith("demo"):
        module = DistillModule(**_bench.demo_recipe()["model"])
        parts = _bench.demo_stages()[int(case[4:])]["partitions"]
        label = f"demo stage {case[4:]} ({_bench.stage_label(parts)})"
    elif case == "vitb":
        module = DistillModule(VITB_STUDENT, VITB_TEACHERS)
        parts = [{"resolution": 224, "batch_size": vitb_batch}]
        label = f"ViT-B/16 student + CLIP ViT-B-16 + DINOv2 ViT-B/14, {vitb_batch} x 224 px"
    else:
        raise ValueError(f"unknown case {case!r}; valid: demo0, demo1, vitb")
    batch = TrainBatch([Partition(torch.rand(p["batch_size"], 3, p["resolution"], p["resolution"],
                                             generator=g)) for p in parts])
    return module, batch, label


def child(case: str, threads: int, vitb_batch: int) -> dict[str, Any]:
    """Measure one case in this process (see the module docstring)."""
    torch.set_num_threads(threads)
    import radio.train.module  # noqa: F401  - the imports belong to the baseline
    import teachers  # noqa: F401

    base = status_kib("VmRSS")
    module, batch, label = build_case(case, vitb_batch)
    built = status_kib("VmRSS")
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
    _bench.train_step(module, opt, batch)  # normalizers fitted and frozen, AdamW state allocated
    before = status_kib("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    _bench.train_step(module, opt, batch)
    step_s = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    student = sum(p.numel() for p in module.model.parameters())
    teacher = sum(p.numel() for t in module.teachers.values() for p in t.parameters())
    return {"case": case, "label": label, "student_params": student, "teacher_params": teacher,
            "state_mib": (16 * student + 4 * teacher) / MIB, "base_mib": base / 1024, "built_mib": built / 1024,
            "before_mib": before / 1024, "peak_mib": peak / 1024, "step_s": step_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vitb-batch", type=int, default=8)
    ap.add_argument("--cases", default="demo0,demo1,vitb", help="comma-separated: demo0, demo1, vitb")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.threads, a.vitb_batch)))
        return
    print(_bench.machine())
    t0 = time.time()
    rows = []
    for case in a.cases.split(","):
        cmd = [sys.executable, __file__, "--child", case, "--threads", str(a.threads),
               "--vitb-batch", str(a.vitb_batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['label']}: student {r['student_params'] / 1e6:.2f} M params, teachers "
              f"{r['teacher_params'] / 1e6:.2f} M; model state {r['state_mib']:.0f} MiB (analytic). RSS: after "
              f"imports {r['base_mib']:.0f} MiB, model built {r['built_mib']:.0f}, before the step "
              f"{r['before_mib']:.0f}, peak during the step {r['peak_mib']:.0f} MiB ({r['step_s']:.1f} s step)",
              flush=True)
    print(f"total {time.time() - t0:.0f} s")
    for r in rows:
        above = r["peak_mib"] - r["base_mib"]
        print(f"peak memory per step, {r['label']}: {r['peak_mib']:.0f} MiB RSS, {above:.0f} MiB above the "
              f"imports; ratio to the model state {above / r['state_mib']:.2f}")


if __name__ == "__main__":
    main()

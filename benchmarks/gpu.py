"""GPU throughput: the student's training step and the teachers' forwards, optimised against a plain fp32 eager
baseline, in one run (called by benchmarks/gpu.sh).

    bash benchmarks/gpu.sh                 # one GPU (H100/H200 class), about 5-8 minutes, nothing downloaded
    bash benchmarks/gpu.sh --dry-run       # CPU, tiny sizes, fp32, no compile: checks the script end to end

Optimised path: bf16 autocast, torch.compile of the student's loss (forward + adaptors + losses; backward and
the fused AdamW step outside the compiled region), flash attention (`sdpa_kernel(FLASH_ATTENTION)`), teachers
through radio's own Teacher.forward (bf16 autocast and channels-last on a GPU) under torch.compile. Baseline:
the same modules in float32, eager, default attention backends, teachers' wrapped models called directly.

Student step: RADIOModel (vit_base and vit_large, patch 16, register multiple 8) at 432 px with the adaptors of
the RADIOv2.5 teachers (clip 1024/1280, siglip 1152/1152, dino_v2 1536/1536, sam -/256; `normalizer: none`),
MSE feature loss against random targets on the student's grid + 1 - cos summary loss, AdamW. Model FLOPs per
step are counted once with torch.utils.flop_counter (matmuls and attention, forward + backward) and divided by
the step time and the GPU's dense bf16 peak (table below, or --peak-tflops): the model FLOP utilisation (MFU;
goal >= 40% at 432 px). Teachers (random init, real sizes, built on the GPU): DFN CLIP ViT-H-14-378, SigLIP
SO400M-14-384, DINOv2-g/14-reg4 at 378 px (27 x 27 cells, the 432 px student's grid), SAM ViT-H at 1024:
images/s optimised vs baseline. The run stops starting new cases past --budget-s (default 360 s) and says
which it skipped. Every ratio is printed after its figures; the last line is the student's ratio.

Dry run (--dry-run): CPU, float32, eager, tiny student (width 64, depth 2) at 64 px and the demo's tiny teachers;
MFU against the CPU's measured float32 matmul rate. It checks the code path, not performance.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench

from radio.losses import LossConfig, feature_loss, summary_cosine_loss, tokens_to_grid
from radio.model import ModelConfig, RADIOModel, StudentConfig, TeacherHead

# Dense bf16 peak FLOP/s by device-name substring (first match wins): NVIDIA's datasheets.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
             ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12)]
# The RADIOv2.5 teachers' (summary, feature) widths: DFN CLIP ViT-H/14, SigLIP SO400M, DINOv2-g, SAM-H's neck.
V25_HEADS = [("clip", 1024, 1280), ("siglip", 1152, 1152), ("dino_v2", 1536, 1536), ("sam", None, 256)]


@dataclass
class Setup:
    """What one mode (GPU or dry run) measures."""

    device: str
    students: dict[str, dict[str, Any]]
    heads: list[tuple[str, int | None, int]]
    resolution: int
    batch: dict[str, int]
    teachers: list[tuple[str, dict[str, Any], int, int]]  # (label, spec, input side, batch)
    steps: int
    warmup: int
    optimised: bool
    extra: dict[str, Any] = field(default_factory=dict)


def gpu_setup(a: argparse.Namespace) -> Setup:
    students = {"vit_base": {"arch": "vit_base"}, "vit_large": {"arch": "vit_large"}}
    teachers = [("DFN CLIP ViT-H-14-378", {"name": "clip", "pretrained": False}, 378, 32),
                ("SigLIP SO400M-14-384", {"name": "siglip", "pretrained": False}, 384, 32),
                ("DINOv2-g/14-reg4 at 378", {"name": "dino_v2", "pretrained": False}, 378, 32),
                ("SAM ViT-H at 1024", {"name": "sam", "pretrained": False}, 1024, 8)]
    return Setup("cuda", {k: v for k, v in students.items() if k in a.students}, V25_HEADS, a.resolution,
                 {"vit_base": a.batch_b, "vit_large": a.batch_l}, teachers, a.steps, 2, True)


def dry_setup(a: argparse.Namespace) -> Setup:
    demo = {t["name"]: t for t in _bench.demo_recipe()["model"]["teachers"]}
    spec = {n: {k: v for k, v in t.items() if k in ("name", "model", "pretrained", "seed", "arch")}
            for n, t in demo.items()}
    tiny = {"arch": "custom", "embed_dim": 64, "depth": 2, "num_heads": 2, "max_resolution": 128}
    teachers = [("demo clip (tiny open_clip)", spec["clip"], 128, 2),
                ("demo dino_v2 (tiny timm)", spec["dino_v2"], 56, 2),
                ("demo sam (tiny segment_anything)", spec["sam"], 128, 2)]
    heads = [("clip", 64, 96), ("dino_v2", 96, 96), ("sam", None, 64)]
    return Setup("cpu", {"tiny": tiny}, heads, 64, {"tiny": 2}, teachers, 1, 1, False)


# -- FLOP counting -----------------------------------------------------------------------------------------------
def _register_cpu_sdpa_flops() -> None:
    """torch's FLOP counter knows the GPU attention kernels; teach it the CPU one so dry runs count attention."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in fc.flop_registry:
        @fc.register_flop_formula(fwd)
        def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)
    if bwd is not None and bwd not in fc.flop_registry:
        @fc.register_flop_formula(bwd)
        def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls, convolutions and attention `fn` runs (forward and backward), per torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def vit_forward_flops(grid: int, patch: int, dim: int, depth: int, prefix: int, mlp_ratio: float = 4.0) -> int:
    """Analytic forward FLOPs of a ViT on a grid x grid image: patch embedding, qkv + proj, QK^T and AV, MLP."""
    n = grid * grid + prefix
    block = 2 * n * dim * 4 * dim + 2 * 2 * n * n * dim + 2 * 2 * n * dim * int(dim * mlp_ratio)
    return 2 * grid * grid * 3 * patch * patch * dim + depth * block


def peak_flops(device: str, given_tflops: float | None) -> tuple[float, str]:
    """The peak FLOP/s MFU is measured against, and where it came from."""
    if given_tflops:
        return given_tflops * 1e12, "given"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in PEAK_BF16:
            if key in name:
                return value, f"{name} dense bf16 datasheet"
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (its dense bf16 peak)")
    x = torch.randn(1024, 1024)
    x @ x
    t = min(_bench.timed(lambda: x @ x) for _ in range(5))
    return 2 * 1024 ** 3 / t, f"measured float32 1024^3 matmul, {torch.get_num_threads()} threads"


def si(x: float, unit: str) -> str:
    """3 significant digits with an SI prefix: si(1.5e14, "FLOP/s") -> '150 TFLOP/s'."""
    for f, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= f:
            return f"{x / f:.3g} {p}{unit}"
    return f"{x:.3g} {unit}"


# -- timing ------------------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(fn: Callable[[], Any], steps: int, device: str, warmup: int) -> float:
    """Median seconds per call of `fn` after `warmup` calls (compilation happens there)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return _bench.median(times)


def attention_context(optimised: bool, device: str):
    if optimised and device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


# -- the student's step ------------------------------------------------------------------------------------------
def build_student(setup: Setup, arch: dict[str, Any]) -> RADIOModel:
    student = StudentConfig(**{"patch_size": 16, "register_multiple": 8, "max_resolution": 1024, **arch})
    heads = [TeacherHead(n, s, f, normalizer="none") for n, s, f in setup.heads]
    with torch.device(setup.device):
        return RADIOModel(ModelConfig(student=student, teachers=heads)).to(setup.device).train()


def student_loss(model: RADIOModel, x: torch.Tensor, targets: dict[str, tuple]) -> torch.Tensor:
    """radio's per-partition loss on fixed targets: MSE on the feature grid + (1 - cos) on summaries."""
    tokens = model.forward_tokens(x)
    cfg = LossConfig(feature="mse")
    total = x.new_zeros((), dtype=torch.float32)
    for name, (summary, features) in targets.items():
        pred = model.adapt(name, tokens, normalized=True)
        total = total + feature_loss(tokens_to_grid(pred.features, tokens.grid).float(), features, cfg)
        if summary is not None:
            total = total + summary_cosine_loss(pred.summary, summary)
    return total


def student_case(setup: Setup, label: str, arch: dict[str, Any], peak: float) -> dict[str, Any]:
    b, r, dev = setup.batch[label], setup.resolution, setup.device
    g = r // 16
    model = build_student(setup, arch)
    prefix = model.backbone.num_prefix_tokens
    gen = torch.Generator(dev).manual_seed(0)
    x = torch.rand(b, 3, r, r, device=dev, generator=gen)
    targets = {n: (torch.randn(b, s, device=dev, generator=gen) if s else None,
                   torch.randn(b, f, g, g, device=dev, generator=gen)) for n, s, f in setup.heads}
    fused = {"fused": True} if dev == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)

    def make_step(loss_fn, autocast: bool, optimised: bool) -> Callable[[], None]:
        def step() -> None:
            with attention_context(optimised, dev), torch.autocast(dev, torch.bfloat16, enabled=autocast):
                loss = loss_fn(model, x, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    flops = count_flops(lambda: student_loss(model, x, targets).backward())
    opt.zero_grad(set_to_none=True)
    base_s = time_steps(make_step(student_loss, False, False), setup.steps, dev, setup.warmup)
    if setup.optimised:
        fast = make_step(torch.compile(student_loss), True, True)
        try:
            fast_s = time_steps(fast, setup.steps, dev, setup.warmup)
            note = "bf16 autocast, torch.compile, flash SDPA, fused AdamW"
        except RuntimeError as e:  # flash unavailable for this shape/device: say so, keep measuring
            print(f"  flash attention refused ({str(e).splitlines()[0][:120]}); default SDPA backends", flush=True)
            fast = make_step(torch.compile(student_loss), True, False)
            fast_s = time_steps(fast, setup.steps, dev, setup.warmup)
            note = "bf16 autocast, torch.compile, default SDPA, fused AdamW"
    else:
        fast_s = time_steps(make_step(student_loss, False, False), setup.steps, dev, setup.warmup)
        note = "dry run: fp32 eager"
    out = {"label": label, "batch": b, "flops": flops, "base_s": base_s, "fast_s": fast_s, "note": note,
           "mfu": flops / fast_s / peak, "mfu_base": flops / base_s / peak}
    out["analytic_ratio"] = flops / (3 * b * vit_forward_flops(g, 16, *_dims(arch), prefix))
    return out


def _dims(arch: dict[str, Any]) -> tuple[int, int]:
    dim, depth, _ = StudentConfig(**{"patch_size": 16, **arch}).resolved()
    return dim, depth


# -- teachers ----------------------------------------------------------------------------------------------------
def teacher_case(setup: Setup, label: str, spec: dict[str, Any], side: int, batch: int) -> dict[str, Any]:
    import teachers

    dev = setup.device
    with torch.device(dev):  # random init on the device (fast); some libraries move to the CPU when they finish
        teacher = teachers.build(spec).to(dev)
    x = torch.rand(batch, 3, side, side, device=dev, generator=torch.Generator(dev).manual_seed(0))

    @torch.no_grad()
    def baseline() -> None:  # fp32, eager, contiguous NCHW, the wrapped model directly
        teacher._forward((teacher._prepare(x) - teacher._mean) / teacher._std)

    fast_fn = torch.compile(teacher) if setup.optimised else teacher
    base_s = time_steps(baseline, setup.steps, dev, setup.warmup)
    fast_s = time_steps(lambda: fast_fn(x), setup.steps, dev, setup.warmup)
    return {"label": label, "side": side, "batch": batch, "base_ips": batch / base_s, "fast_ips": batch / fast_s}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, fp32, no compile")
    ap.add_argument("--students", default="vit_base,vit_large")
    ap.add_argument("--resolution", type=int, default=432)
    ap.add_argument("--batch-b", type=int, default=64, help="ViT-B student batch")
    ap.add_argument("--batch-l", type=int, default=32, help="ViT-L student batch")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement (after 2 warm-up)")
    ap.add_argument("--no-teachers", action="store_true")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if it is not in the table")
    ap.add_argument("--budget-s", type=float, default=360, help="start no new case after this many seconds")
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        setup = dry_setup(a)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run on a CPU")
        torch.backends.cuda.matmul.allow_tf32 = False  # the baseline is plain fp32
        setup = gpu_setup(a)
    print(_bench.machine() + (" [DRY RUN: CPU, tiny sizes, fp32, eager; not a performance figure]"
                              if a.dry_run else ""), flush=True)
    peak, source = peak_flops(setup.device, a.peak_tflops)
    print(f"peak for MFU: {si(peak, 'FLOP/s')} ({source})", flush=True)
    skipped: list[str] = []
    s_rows = []
    for label, arch in setup.students.items():
        if time.time() - t0 > a.budget_s:
            skipped.append(f"student {label}")
            continue
        r = student_case(setup, label, arch, peak)
        s_rows.append(r)
        print(f"student {label} step, batch {r['batch']} at {setup.resolution} px: "
              f"{si(r['flops'], 'FLOP')} per step (counted; {r['analytic_ratio']:.2f}x the analytic backbone "
              f"3 x forward); fp32 eager {r['base_s'] * 1e3:.1f} ms (MFU {r['mfu_base'] * 100:.3g}%), {r['note']} "
              f"{r['fast_s'] * 1e3:.1f} ms (MFU {r['mfu'] * 100:.3g}%); goal MFU >= 40%", flush=True)
    t_rows = []
    if not a.no_teachers:
        for label, spec, side, batch in setup.teachers:
            if time.time() - t0 > a.budget_s:
                skipped.append(label)
                continue
            r = teacher_case(setup, label, spec, side, batch)
            if setup.device == "cuda":
                torch.cuda.empty_cache()  # the teacher is gone with the case's frame
            t_rows.append(r)
            print(f"teacher {label}, batch {batch} at {side} px: {r['base_ips']:.1f} img/s fp32 eager, "
                  f"{r['fast_ips']:.1f} img/s optimised; ratio {r['fast_ips'] / r['base_ips']:.2f}", flush=True)
    if skipped:
        print(f"skipped past the {a.budget_s:.0f} s budget: {', '.join(skipped)}")
    print(f"total {time.time() - t0:.0f} s")
    for r in t_rows:
        print(f"ratio optimised / fp32 eager teacher throughput, {r['label']}: {r['fast_ips'] / r['base_ips']:.2f}")
    for r in s_rows:
        print(f"ratio optimised / fp32 eager student step, {r['label']} at {setup.resolution} px: "
              f"{r['base_s'] / r['fast_s']:.2f} (MFU {r['mfu'] * 100:.3g}%)")


if __name__ == "__main__":
    main()

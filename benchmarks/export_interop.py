"""Export formats side by side on one randomly initialised student: load time (radio.load with and without the
sha256 check, transformers AutoModel), ONNX export time, onnxruntime vs PyTorch latency and agreement.

    PYTHONPATH=$PWD python benchmarks/export_interop.py --arch vit_base --sizes 224 432x320

Prints one table and the ratios last. No GPU, no downloads; figures go to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vit_base")
    p.add_argument("--max-resolution", type=int, default=1024)
    p.add_argument("--sizes", nargs="+", default=["224", "432x320"], help="HxW or S (square)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    import onnxruntime as ort

    import radio
    from radio.export import export_model, load
    from radio.export.onnx import INPUT_NAME, OnnxGraph, export_onnx
    from radio.model.radio_model import ModelConfig, RADIOModel, TeacherHead
    from radio.model.vit import StudentConfig

    torch.manual_seed(0)
    config = ModelConfig(student=StudentConfig(arch=a.arch, max_resolution=a.max_resolution),
                         teachers=[TeacherHead("clip", 1024, 1280), TeacherHead("dino_v2", 1536, 1536)])
    model = RADIOModel(config).eval()
    params = sum(t.numel() for t in model.state_dict().values()) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_model(model, tmp / "native")
        export_model(model, tmp / "hf", fmt="hf")
        t_load = _time(lambda: load(tmp / "native"), a.reps)
        t_load_nv = _time(lambda: load(tmp / "native", verify=False), a.reps)
        from transformers import AutoModel

        t_hf = _time(lambda: AutoModel.from_pretrained(tmp / "hf"), a.reps)
        t = time.perf_counter()
        export_onnx(model, tmp / "model.onnx")
        t_onnx_export = time.perf_counter() - t
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        session = ort.InferenceSession(str(tmp / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        graph = OnnxGraph(model)
        for spec in a.sizes:
            h, w = (int(v) for v in (spec.split("x") if "x" in spec else (spec, spec)))
            x = torch.rand(1, 3, h, w)
            with torch.no_grad():
                t_pt = _time(lambda: graph(x), a.reps)
                ref = graph(x)
            t_ort = _time(lambda: session.run(None, {INPUT_NAME: x.numpy()}), a.reps)
            got = session.run(None, {INPUT_NAME: x.numpy()})
            diff = max(float((r - torch.from_numpy(g)).abs().max()) for r, g in zip(ref, got))
            scale = max(float(r.abs().max()) for r in ref)
            rows.append((f"{h}x{w}", t_pt, t_ort, diff, scale))
    print(f"student {a.arch} ({params:.1f} M values incl. 2 adaptor pairs), max resolution "
          f"{a.max_resolution}, {a.threads} threads, radio {radio.__version__}, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}")
    print(f"load: radio.load {t_load:.2f} s (sha256 check on), {t_load_nv:.2f} s (off); "
          f"AutoModel.from_pretrained {t_hf:.2f} s; ONNX export {t_onnx_export:.1f} s")
    print("size      pytorch_s  onnxruntime_s  max_abs_diff  largest_output")
    for size, t_pt, t_ort, diff, scale in rows:
        print(f"{size:<9} {t_pt:9.3f}  {t_ort:13.3f}  {diff:12.2e}  {scale:14.3g}")
    print(f"ratios: checksum overhead of radio.load x{t_load / t_load_nv:.2f}; "
          + "; ".join(f"onnxruntime/pytorch latency at {s} x{t_ort / t_pt:.2f}"
                      for s, t_pt, t_ort, _, _ in rows))


if __name__ == "__main__":
    main()

"""benchmarks/gpu.sh's CPU dry run end to end, and the FLOP count its MFU rests on."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from radio.model import ModelConfig, RADIOModel, StudentConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu  # noqa: E402  (benchmarks/ is scripts, not a package)


@pytest.mark.parametrize("grid,dim,depth,heads", [(4, 32, 2, 2), (6, 48, 1, 3)])
def test_counted_flops_equal_the_analytic_vit_formula(grid, dim, depth, heads):
    """Matmuls, the patch convolution and attention (the CPU kernel, which torch's counter does not know by
    itself) are all counted: forward FLOPs of the student backbone equal the closed form."""
    cfg = StudentConfig(arch="custom", embed_dim=dim, depth=depth, num_heads=heads, patch_size=16,
                        register_multiple=4, max_resolution=128)
    model = RADIOModel(ModelConfig(student=cfg, teachers=[])).eval()
    x = torch.rand(2, 3, 16 * grid, 16 * grid)
    with torch.no_grad():
        counted = gpu.count_flops(lambda: model.forward_tokens(x))
    prefix = model.backbone.num_prefix_tokens
    assert counted == 2 * gpu.vit_forward_flops(grid, 16, dim, depth, prefix)


@pytest.mark.slow
def test_gpu_script_dry_run_reports_mfu_and_ratios():
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], check=False, capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert "DRY RUN" in lines[0]
    mfus = [float(m) / 100 for m in re.findall(r"MFU ([0-9.]+(?:e[-+]?[0-9]+)?)%", r.stdout)]
    assert mfus and all(0 < m <= 1 for m in mfus)
    teachers = [ln for ln in lines if ln.startswith("ratio optimised / fp32 eager teacher throughput")]
    assert len(teachers) == 3  # the demo's three teacher families
    assert lines[-1].startswith("ratio optimised / fp32 eager student step")
    ratio = float(re.search(r": ([0-9.]+) \(MFU", lines[-1]).group(1))
    # the last line's ratio is the student line's fp32 eager time over its optimised time (both printed in ms)
    step = [ln for ln in lines if ln.startswith("student ")][-1]
    base_ms, fast_ms = (float(v) for v in re.findall(r"([0-9.]+) ms \(MFU", step))
    assert ratio == pytest.approx(base_ms / fast_ms, rel=0.06, abs=0.01)

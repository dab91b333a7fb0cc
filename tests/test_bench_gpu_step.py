"""bench/gpu_step.py at its reduced shape on CPU: one trainer step per method runs, is counted and projected."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_step_bench_reduced_shape_on_cpu(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "gpu_step.py"), "--shape", "reduced", "--device", "cpu", "--threads", "1",
           "--warmup", "0", "--steps", "1", "--work", str(tmp_path / "work")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    lines = run.stdout.strip().splitlines()
    for method in ("vsepp", "coder", "ascl"):
        line = next(x for x in lines if x.startswith(f"{method}: "))
        step, core, tflop, mfu, hours = map(float, re.search(
            r"step ([\d.]+) s wall, ([\d.]+) core-s, .* ([\d.]+) TFLOP/step, MFU ([\d.]+)%.* epochs = ([\d.]+) h \(\d+ core-h\)", line).groups())
        assert step > 0 and core > 0 and tflop > 0 and 0 < mfu and hours > 0, line
    assert lines[-1].startswith("projection (coco, reduced shape, cpu, 1 thread(s), steps only): vsepp "), lines[-1]

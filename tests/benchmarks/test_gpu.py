"""benchmarks/gpu.py off the GPU: its report and verdict from made-up results, and a CPU dry run of every piece."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
gpu = pytest.importorskip("gpu")


def rows_at(num_nodes, **statuses):
    return [{"method": m, "num_nodes": num_nodes, "status": statuses.get(m, "ok"), "seconds": 0.002, "peak_mb": 10.0}
            for m in gpu.METHODS]


def test_the_report_and_the_verdict_read_every_outcome():
    rows = rows_at(16_384) + rows_at(65_536, dense="OOM", gatv2="error: RuntimeError", flex="skipped: time budget")
    next(r for r in rows if r["status"].startswith("error"))["detail"] = "CUDA error: an illegal memory access was encountered"
    tests = {"status": "passed", "summary": "3 passed", "command": "pytest tests/ops"}
    molecules = {"command": "python benchmarks/molecules.py", "status": "timed out after 60 s", "output": ""}
    markdown = gpu.report("python benchmarks/gpu.py", torch.device("cpu"), tests, {"triton": "1e-07"}, rows, (16_384, 65_536, 262_144),
                          molecules, 5, 12.0)
    assert "| 65,536 |  | 2.00 | 10 |" in markdown and "| OOM | — |" in markdown and "| not run | — |" in markdown
    assert "gatv2 at N=65,536: CUDA error: an illegal memory access" in markdown and "**timed out after 60 s**" in markdown
    assert "| 1.000 | 1.000 | 1.000 |" in markdown  # triton / transformer, / flex, memory at 16,384
    assert gpu.problems_of(tests, rows, molecules) == ["gatv2 at N=65,536: error: RuntimeError", "molhiv step timed out after 60 s"]
    skipped = {**molecules, "status": "skipped: no ogbg-molhiv at datasets/ogbg_molhiv"}
    assert gpu.problems_of(None, rows_at(16_384, dense="OOM"), skipped) == []
    assert gpu.problems_of({**tests, "status": "failed (exit 1)"}, [], None) == ["tests failed (exit 1)"]


def test_only_running_out_of_memory_counts_as_out_of_memory():
    from common import is_oom

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_dry_run_on_cpu_measures_every_method_and_writes_its_report(tmp_path):
    out = tmp_path / "RESULTS-gpu.md"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run-cpu", "--skip-tests", "--skip-molecules",
               "--repeats", "1", "--output", str(out)]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # the script finds the checkout itself
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    markdown = out.read_text()
    for num_nodes in gpu.DRY_RUN_SIZES:
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {num_nodes} |"))
        assert "error" not in row and "not run" not in row and "FlexAttention has no CPU backward" in row, row
    assert "problems: none" in proc.stdout and "flex " in markdown.split("largest |out − dense SDPA out|")[1].splitlines()[0]
    assert f"`CSRPattern` for csr at N={gpu.DRY_RUN_SIZES[0]:,} (built once, outside its columns):" in markdown

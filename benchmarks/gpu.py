"""The GPU check: the op test suite on CUDA, then our attention against PyG and PyTorch baselines.

On one CUDA GPU, in about 7 minutes, this script

1. runs ``pytest tests/ops`` with ``GSA_TEST_DEVICE=cuda`` (the shared backend suite and the
   triton kernel tests run on the GPU; the CPU-only compiled-backend tests are left out);
2. times forward+backward of one attention layer (64 in-channels, 4 heads × 16) over a sliding
   window ±64 at N = 16k, 65k, 262k and 1M, and records peak GPU memory above the inputs:

   * ``triton`` / ``band`` / ``csr`` — ``sparse_attention(backend=...)`` on a ``CSRPattern`` built once
     (as a model does for all its layers), between query/key/value and skip projections (``band``:
     PyTorch's fused SDPA over blocks of queries and their keys, chunk by chunk, through autograd);
   * ``transformer``, ``gatv2`` — PyG ``TransformerConv`` and ``GATv2Conv`` on the ``edge_index``;
   * ``dense`` — ``scaled_dot_product_attention`` with the boolean ``[N, N]`` mask;
   * ``flex`` — ``torch.compile``-d ``flex_attention`` with a window ``mask_mod`` (block mask
     built once);

   a method that runs out of memory is recorded as such and not tried at larger N;
3. runs the ogbg-molhiv training-step benchmark (``benchmarks/molecules.py --device cuda``) if
   that script is present;

and writes everything, with the command and the GPU's name, to ``--output`` (default
``benchmarks/RESULTS-gpu.md``) after each phase, so a run cut short keeps what it measured. It
exits with status 1 when the tests fail, an attention point errs (other than running out of
memory) or the molhiv step fails, and at once (status 2) on a machine without CUDA.

The package runs from this checkout (no install needed). The molhiv step reads ogbg-molhiv from
``--molecules-root`` (default ``datasets``): on a lent machine, carry ``datasets/ogbg_molhiv``'s
``raw``, ``split`` and ``mapping`` folders (``processed`` is rebuilt there, encodings included); without
them the step is skipped and says so. On the device tool, write to ``$OUT`` to get the file back::

    python benchmarks/gpu.py --output "$OUT/RESULTS-gpu.md"

A new run replaces the whole file: update the figures that README.md and RESULTS.md quote from it.

Usage::

    python benchmarks/gpu.py                 # the full check (needs CUDA and triton)
    python benchmarks/gpu.py --dry-run-cpu   # smoke-runs every piece on CPU at tiny sizes, printed only
"""
from __future__ import annotations

import argparse
import gc
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
METHODS = ("triton", "band", "csr", "transformer", "gatv2", "dense", "flex")
SPARSE = ("triton", "band", "csr")  # sparse_attention(backend=...) over a CSRPattern built once
SIZES = (16_384, 65_536, 262_144, 1_048_576)
DRY_RUN_SIZES = (80, 144)  # the Triton interpreter runs each program in Python
# Seconds for the whole run and for its parts; the attention points get what is left after the
# tests, minus what the molecule benchmark is kept.
TOTAL_BUDGET, TESTS_BUDGET, MOLECULES_BUDGET = 420.0, 130.0, 120.0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="run every piece on CPU at tiny sizes (triton in its interpreter); print, write nothing")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward+backward passes per point, after one warm-up")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the test suite")
    parser.add_argument("--skip-molecules", action="store_true", help="do not run the molecule training-step benchmark")
    parser.add_argument("--molecules-root", default="datasets", help="data root holding ogbg_molhiv for the molecule step")
    parser.add_argument("--output", type=Path, help="where to write the report (default: benchmarks/RESULTS-gpu.md; "
                                                    "--dry-run-cpu writes only when this is given)")
    args = parser.parse_args(argv)
    if args.repeats <= 0:
        parser.error("--repeats must be positive")
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.dry_run_cpu:
    # Must precede the first import of triton (torch_geometric imports it): kernels are
    # interpreted only if this is set when they are defined.
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))  # the package from this checkout, installed or not
from attention import HEAD_DIM, HEADS, IN_CHANNELS, WINDOW  # noqa: E402  (one home for the layer sizes)
from common import is_oom  # noqa: E402

from graph_sparse_attn.io import atomic_write_text  # noqa: E402


class Deadline:
    """Wall-clock budget of the run: parts ask how many seconds they may still use."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def require_cuda() -> torch.device:
    """The GPU, or exit at once (status 2) saying what is missing."""
    from graph_sparse_attn.ops import triton_kernel

    missing = None
    if not torch.cuda.is_available():
        missing = (f"a CUDA GPU, but torch {torch.__version__} sees none (built with CUDA {torch.version.cuda}); "
                   "use --dry-run-cpu to smoke-run it on CPU")
    elif not triton_kernel.available():
        missing = "triton for backend='triton': pip install -e '.[gpu]'"
    if missing:
        print(f"benchmarks/gpu.py needs {missing}", file=sys.stderr)
        sys.exit(2)
    return torch.device("cuda")


# ----------------------------------------------------------------------------- 1. tests


def run_tests(device: torch.device, timeout: float, dry_run: bool) -> dict:
    """Run the op test suite on ``device`` in a subprocess; ``{"status", "summary", "command"}``."""
    # The compiled backend's own tests are CPU-only (inductor C++ kernels): they add nothing here.
    # Tests of the CPU-only compiled backend elsewhere (its parametrisations) are deselected too: each costs
    # an inductor compile and checks nothing on the GPU.
    targets = (["tests/ops/test_triton_kernel.py"] if dry_run
               else ["tests/ops", "--ignore=tests/ops/test_compiled_kernel.py", "-k", "not compiled", "--durations=10"])
    command = [sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider"]
    env = {**_with_checkout_on_path(os.environ), "GSA_TEST_DEVICE": device.type}
    shown = f"GSA_TEST_DEVICE={device.type} " + shlex.join(["python", *command[1:]])
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as error:
        tail = (error.stdout or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"status": f"timed out after {timeout:.0f} s", "summary": tail.strip(), "command": shown}
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else proc.stderr.strip()[-500:]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    status = "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    return {"status": status, "summary": "\n".join(failures[:30] + [summary]), "command": shown}


# ----------------------------------------------------------------------------- 2. attention layers


def build_layer(method: str, num_nodes: int, device: torch.device) -> Callable:
    """The layer of ``method`` as ``fn(x, graph) -> [N, H·D]``; ``graph`` is what `build_graph` gives it."""
    from torch_geometric.nn import GATv2Conv, TransformerConv

    if method == "transformer":
        return TransformerConv(IN_CHANNELS, HEAD_DIM, heads=HEADS).to(device)
    if method == "gatv2":
        return GATv2Conv(IN_CHANNELS, HEAD_DIM, heads=HEADS, add_self_loops=False).to(device)
    return ProjectedAttention(method).to(device)


class ProjectedAttention(torch.nn.Module):
    """Query/key/value and skip projections around one attention op (`METHODS` but the PyG layers)."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.qkv = torch.nn.Linear(IN_CHANNELS, 3 * HEADS * HEAD_DIM)
        self.skip = torch.nn.Linear(IN_CHANNELS, HEADS * HEAD_DIM)

    def forward(self, x: torch.Tensor, graph) -> torch.Tensor:
        from graph_sparse_attn import sparse_attention

        num_nodes = x.size(0)
        q, k, v = self.qkv(x).view(num_nodes, 3, HEADS, HEAD_DIM).unbind(1)
        if self.method in SPARSE:
            out = sparse_attention(q, k, v, graph, backend=self.method)
        else:  # dense / flex: [1, H, N, D] layout
            q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            if self.method == "dense":
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=graph)
            else:
                out = _compiled_flex()(q, k, v, block_mask=graph)
            out = out.squeeze(0).transpose(0, 1)
        return out.reshape(num_nodes, -1) + self.skip(x)


_FLEX: Optional[Callable] = None


def _compiled_flex() -> Callable:
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def _window_mask_mod(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx).abs() <= WINDOW


def build_graph(method: str, num_nodes: int, device: torch.device):
    """What ``method`` attends over: ``edge_index``, a ``CSRPattern``, a dense mask or a block mask."""
    from graph_sparse_attn import CSRPattern, patterns

    if method == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        # Eager construction materialises [N, N] index tensors (2 GB at 16k); compiled, it does not.
        build = create_block_mask if num_nodes**2 <= 2**28 else torch.compile(create_block_mask)
        return build(_window_mask_mod, None, None, num_nodes, num_nodes, device=device)
    edge_index = patterns.sliding_window(num_nodes, WINDOW, device=device)
    if method in SPARSE:
        return CSRPattern.from_edge_index(edge_index, num_nodes)
    if method == "dense":
        mask = torch.zeros(num_nodes, num_nodes, dtype=torch.bool, device=device)
        mask[edge_index[1], edge_index[0]] = True
        return mask
    return edge_index


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:300]


def measure(method: str, num_nodes: int, device: torch.device, repeats: int) -> dict:
    """Median forward+backward seconds and peak memory (MB above inputs and weights; CUDA only)."""
    if method == "flex" and device.type == "cpu":  # the dry run: check_agreement still runs its forward
        return {"status": "skipped: FlexAttention has no CPU backward"}
    torch.manual_seed(0)
    try:
        _sync(device)
        start = time.perf_counter()
        graph = build_graph(method, num_nodes, device)
        _sync(device)
        build_seconds = time.perf_counter() - start
        layer = build_layer(method, num_nodes, device)
        x = torch.randn(num_nodes, IN_CHANNELS, device=device, requires_grad=True)

        def step() -> None:
            layer(x, graph).square().mean().backward()
            layer.zero_grad(set_to_none=True)
            x.grad = None

        step()  # warm-up: compiles Triton kernels / flex attention, autotunes cuBLAS
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - start)
        peak_mb = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20 if device.type == "cuda" else None
        result = {"status": "ok", "seconds": statistics.median(times), "peak_mb": peak_mb}
        if method in SPARSE:  # the prebuilt pattern is outside the timed steps and the memory baseline: say what it costs
            tensors = [t for t in vars(graph).values() if isinstance(t, torch.Tensor)]
            result.update(edges=graph.num_edges, pattern_seconds=build_seconds,
                          pattern_mb=sum(t.numel() * t.element_size() for t in tensors) / 2**20)
        return result
    except Exception as error:  # noqa: BLE001 -- any failure of one point is recorded, the run goes on
        if is_oom(error):
            return {"status": "OOM"}
        return {"status": f"error: {type(error).__name__}", "detail": _first_line(error)}
    finally:
        graph = layer = x = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def check_agreement(num_nodes: int, device: torch.device) -> Dict[str, str]:
    """Largest |out − dense out| of each projected method with the same weights (all compute one function)."""
    torch.manual_seed(0)
    x = torch.randn(num_nodes, IN_CHANNELS, device=device)
    reference = ProjectedAttention("dense").to(device)
    outputs = {}
    # Grad mode as in the timed passes (flex reuses its compiled graph); CPU flex has no backward.
    with torch.set_grad_enabled(device.type == "cuda"):
        for method in ("dense", *SPARSE, "flex"):
            layer = ProjectedAttention(method).to(device)
            layer.load_state_dict(reference.state_dict())
            try:
                outputs[method] = layer(x, build_graph(method, num_nodes, device)).detach()
            except Exception as error:  # noqa: BLE001 -- reported in the table header
                outputs[method] = f"{type(error).__name__}: {_first_line(error)}"
    dense = outputs.pop("dense")
    if isinstance(dense, str):
        return {"dense": dense}
    return {m: out if isinstance(out, str) else f"{(out - dense).abs().max().item():.2e}" for m, out in outputs.items()}


def run_attention(device: torch.device, sizes, repeats: int, deadline: Deadline, reserve: float, rows: List[dict],
                  after_each: Callable[[], object]) -> None:
    """Measure every method at every size into ``rows`` (calling ``after_each`` after each size)."""
    failed: Dict[str, str] = {}  # method -> why it is not tried at larger N
    for num_nodes in sizes:
        for method in METHODS:
            if method in failed:
                result = {"status": failed[method]}
            elif deadline.left() < reserve:
                result = {"status": "skipped: time budget"}
            else:
                result = measure(method, num_nodes, device, repeats)
                if result["status"] != "ok":
                    failed[method] = f"skipped ({result['status']} at N={num_nodes:,})"
            rows.append({"method": method, "num_nodes": num_nodes, **result})
            print(f"{method:>11} N={num_nodes:>9,}: {result}", flush=True)
        after_each()


def _ratio(rows: List[dict], num_nodes: int, ours: str, base: str, key: str) -> str:
    lookup = {r["method"]: r for r in rows if r["num_nodes"] == num_nodes and r["status"] == "ok"}
    if ours in lookup and base in lookup and lookup[ours][key] and lookup[base][key]:
        return f"{lookup[ours][key] / lookup[base][key]:.3f}"
    return "—"


def format_attention(rows: List[dict], sizes) -> str:
    notes = [f"- {r['method']} at N={r['num_nodes']:,}: {r['detail']}" for r in rows if "detail" in r]
    notes += [f"- `CSRPattern` for {r['method']} at N={r['num_nodes']:,} (built once, outside its columns): "
              f"{1000 * r['pattern_seconds']:.1f} ms to build, {r['pattern_mb']:.0f} MB" for r in rows if "pattern_mb" in r]
    head = "| N | E | " + " | ".join(f"{m} ms | {m} MB" for m in METHODS)
    head += " | triton / transformer time | triton / flex time | triton / transformer memory |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for num_nodes in sizes:
        edges = next((f"{r['edges']:,}" for r in rows if r["num_nodes"] == num_nodes and "edges" in r), "")
        cells = []
        for method in METHODS:
            r = next((r for r in rows if r["method"] == method and r["num_nodes"] == num_nodes), {"status": "not run"})
            if r["status"] == "ok":
                cells += [f"{1000 * r['seconds']:.2f}", "—" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"]
            else:
                cells += [r["status"], "—"]
        cells += [_ratio(rows, num_nodes, "triton", "transformer", "seconds"), _ratio(rows, num_nodes, "triton", "flex", "seconds"),
                  _ratio(rows, num_nodes, "triton", "transformer", "peak_mb")]
        lines.append(f"| {num_nodes:,} | {edges} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ([""] + notes if notes else []))


# ----------------------------------------------------------------------------- 3. molecules


def _with_checkout_on_path(env) -> dict:
    """``env`` with this checkout first on ``PYTHONPATH``, so subprocesses import the package from it."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])}


def run_molecules(device: torch.device, timeout: float, dry_run: bool, root: str) -> dict:
    size = ["--steps", "2", "--warmup", "1", "--batches", "1", "--batch-size", "8"] if dry_run else ["--steps", "10", "--warmup", "2"]
    command = [sys.executable, str(HERE / "molecules.py"), "--device", device.type, "--root", root, *size]
    shown = shlex.join(["python", "benchmarks/molecules.py", *command[2:]])
    folder = (ROOT / root if not Path(root).is_absolute() else Path(root)) / "ogbg_molhiv"
    if not (folder / "raw").is_dir():
        return {"command": shown, "status": f"skipped: no ogbg-molhiv at {folder} (see the docstring: carry its raw files)", "output": ""}
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_with_checkout_on_path(os.environ))
    except subprocess.TimeoutExpired:
        return {"command": shown, "status": f"timed out after {timeout:.0f} s", "output": ""}
    if proc.returncode != 0:
        return {"command": shown, "status": f"failed (exit {proc.returncode})", "output": proc.stderr.strip()[-1500:]}
    return {"command": shown, "status": "ok", "output": proc.stdout.strip()}


# ----------------------------------------------------------------------------- report


def describe(device: torch.device) -> str:
    import platform

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'unknown'}, {os.cpu_count()} cores)"
    return f"{name}; torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_version}"


def report(command: str, device: torch.device, tests: Optional[dict], agreement: Dict[str, str], rows: List[dict], sizes,
           molecules: Optional[dict], repeats: int, seconds: float) -> str:
    parts = [
        "# GPU check",
        f"Command: `{command}` ({seconds:.0f} s in all)\n\nDevice: {describe(device)}",
    ]
    if tests is not None:
        parts.append(f"## Op test suite on {device.type}\n\n`{tests['command']}`: **{tests['status']}**\n\n```\n{tests['summary']}\n```")
    parts.append(
        f"## Attention layer, sliding window ±{WINDOW}, forward+backward\n\n"
        f"{IN_CHANNELS} in-channels, {HEADS} heads × {HEAD_DIM}; median of {repeats} passes after one warm-up; "
        "MB = peak allocated GPU memory above inputs and weights. triton/csr get a `CSRPattern` built once, "
        "flex a block mask built once, dense a boolean `[N, N]` mask.\n\n"
        f"Same weights, N={sizes[0]:,}: largest |out − dense SDPA out| "
        + (", ".join(f"{m} {d}" for m, d in agreement.items()) or "not measured") + ".\n\n" + format_attention(rows, sizes)
    )
    if molecules is None:
        parts.append("## ogbg-molhiv training step\n\nNot run (--skip-molecules, or not reached).")
    elif molecules["status"] == "ok":
        parts.append(f"## ogbg-molhiv training step\n\n`{molecules['command']}`\n\n{molecules['output']}")
    else:
        parts.append(f"## ogbg-molhiv training step\n\n`{molecules['command']}`: **{molecules['status']}**\n\n```\n{molecules['output']}\n```")
    return "\n\n".join(parts) + "\n"


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = Deadline(TOTAL_BUDGET)
    if args.dry_run_cpu:
        device, sizes = torch.device("cpu"), DRY_RUN_SIZES
    else:
        device, sizes = require_cuda(), SIZES
    command = shlex.join(["python", "benchmarks/gpu.py", *sys.argv[1:]])
    print(f"{command}: {describe(device)}", flush=True)

    output = args.output if args.output is not None or args.dry_run_cpu else HERE / "RESULTS-gpu.md"
    tests, agreement, rows, molecules = None, {}, [], None

    def write_report() -> str:
        markdown = report(command, device, tests, agreement, rows, sizes, molecules, args.repeats, time.monotonic() - started)
        if output is not None:
            atomic_write_text(markdown, output)
        return markdown

    try:  # the report is rewritten after each phase and once more however the run ends
        if not args.skip_tests:
            tests = run_tests(device, min(TESTS_BUDGET, deadline.left()), args.dry_run_cpu)
            print(f"tests: {tests['status']}\n{tests['summary']}", flush=True)
            write_report()
        reserve = 0.0 if args.skip_molecules else MOLECULES_BUDGET
        agreement = check_agreement(sizes[0], device)
        print(f"agreement with dense SDPA at N={sizes[0]:,}: {agreement}", flush=True)
        run_attention(device, sizes, args.repeats, deadline, reserve, rows, after_each=write_report)
        if not args.skip_molecules:
            # A slow attention point may have eaten into the reserve: the step still gets half of it.
            molecules = run_molecules(device, max(deadline.left(), MOLECULES_BUDGET / 2), args.dry_run_cpu, args.molecules_root)
    finally:
        print(write_report())
    problems = problems_of(tests, rows, molecules)
    print("problems: " + ("; ".join(problems) if problems else "none"), flush=True)
    return 1 if problems else 0


def problems_of(tests: Optional[dict], rows: List[dict], molecules: Optional[dict]) -> List[str]:
    """What makes the check fail: failed tests, attention points that erred (running out of memory or
    time is a measurement, not a failure) and a molecule step that failed or timed out."""
    problems = [] if tests is None or tests["status"] == "passed" else [f"tests {tests['status']}"]
    problems += [f"{r['method']} at N={r['num_nodes']:,}: {r['status']}" for r in rows if r["status"].startswith("error")]
    if molecules is not None and molecules["status"].startswith(("failed", "timed out")):
        problems.append(f"molhiv step {molecules['status']}")
    return problems


if __name__ == "__main__":
    sys.exit(main(ARGS))

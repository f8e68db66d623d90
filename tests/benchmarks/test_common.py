"""benchmarks/common.py: interleaved timing orders and how a failed point is reported."""
import collections
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import common  # noqa: E402


def test_round_orders_give_every_method_every_predecessor_about_equally_often():
    names = ["a", "b", "c", "d", "e"]
    sequence = [name for round_index in range(400) for name in common.round_order(names, round_index)]
    assert all(sorted(common.round_order(names, i)) == names for i in range(10))
    pairs = collections.Counter(zip(sequence, sequence[1:]))
    after = {name: [pairs[(other, name)] for other in names if other != name] for name in names}
    # 400 rounds: each method has 4 possible predecessors, about 80 times each (a reversed order gave 2 of them, 0 times the rest)
    assert all(min(counts) > 50 and max(counts) < 120 for counts in after.values()), after


def test_a_crashed_point_is_a_failure_and_only_an_allocation_failure_is_out_of_memory(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("import os, signal, sys\nif sys.argv[2] == 'segv':\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
                     "raise MemoryError('no room')\n")
    assert common.run_point(str(crash), ["segv"], timeout=60)["status"] == "failed: killed by signal 11"
    assert common.run_point(str(crash), ["alloc"], timeout=60)["status"] == "out of memory"

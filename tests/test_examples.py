"""The examples keep working: each runs to the end and writes what it says it writes."""
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_runs(tmp_path):
    script = tmp_path / "quickstart.py"
    shutil.copy(EXAMPLES / "quickstart.py", script)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rows of alpha sum to 1" in proc.stdout
    assert (tmp_path / "patterns.png").read_bytes()[:4] == b"\x89PNG"

"""Every Python snippet of the README runs as written, each on its own (its placeholders defined in it)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets():
    text = README.read_text(encoding="utf-8")
    snippets = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        line = text.count("\n", 0, match.start()) + 2
        snippets.append(pytest.param(match.group(1), id=f"README.md:{line}"))
    return snippets


def test_the_readme_has_snippets():
    assert len(python_snippets()) >= 5


@pytest.mark.parametrize("code", python_snippets())
def test_snippet_runs_as_written(code, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    exec(compile(code, request.node.callspec.id, "exec"), {"__name__": "__readme__"})

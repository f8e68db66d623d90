"""Imports point one way (the lower layers never pull in `graph_sparse_attn.train`), and every source compiles cleanly."""
import json
import subprocess
import sys


def loaded_modules(statement):
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_data_ops_patterns_nn_import_nothing_from_train():
    modules = loaded_modules("import graph_sparse_attn.data, graph_sparse_attn.ops, graph_sparse_attn.patterns, graph_sparse_attn.nn")
    assert "graph_sparse_attn.nn" in modules  # the import itself worked
    assert not [m for m in modules if m.startswith("graph_sparse_attn.train")]


def test_data_builders_import_nothing_from_train():
    modules = loaded_modules("import graph_sparse_attn.data.benchmarks, graph_sparse_attn.io")
    assert "graph_sparse_attn.data.benchmarks" in modules
    assert not [m for m in modules if m.startswith("graph_sparse_attn.train")]


def test_sources_compile_without_syntax_warnings():
    # Python 3.12 warns about invalid escapes (e.g. LaTeX in a docstring that is not raw).
    import pathlib
    import warnings

    root = pathlib.Path(__file__).resolve().parent.parent
    for path in [*root.glob("graph_sparse_attn/**/*.py"), *root.glob("benchmarks/*.py"), *root.glob("examples/*.py")]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SyntaxWarning)
            warnings.simplefilter("error", DeprecationWarning)  # Python 3.11 reports invalid escapes as this
            compile(path.read_text(), str(path), "exec")

"""Imports point one way (checked on every module's source, lazy imports included), and every source compiles cleanly."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "graph_sparse_attn"

# What each part of the package may import from the others (its own modules aside). `ops` is the
# bottom; `patterns` builds on it; `transforms` turns patterns into per-graph/per-sequence recipes;
# `nn` and `data` sit side by side above them; `train` and the CLI on top. `io` (atomic writes)
# and `viz` (plots) are leaves anyone may use.
ALLOWED = {
    "ops": set(),
    "io": set(),
    "patterns": {"ops"},
    "viz": {"ops", "patterns", "io"},
    "transforms": {"ops", "patterns"},
    "nn": {"ops", "patterns", "transforms"},
    "data": {"ops", "patterns", "transforms", "io"},
    "train": {"ops", "patterns", "transforms", "nn", "data", "io", "viz"},
    "__main__": {"train"},
}


def package_imports(path, root=ROOT):
    """Top-level parts of the package that the module at ``path`` (under ``root``) imports, lazy imports included."""
    module = path.relative_to(root).with_suffix("").parts
    package = module[:-1]  # what relative imports start from (also for an __init__.py)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            targets = [target] if node.module else [target + [alias.name] for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        else:
            continue
        found |= {t[1] for t in targets if t[0] == "graph_sparse_attn" and len(t) > 1}
    return found


def part_of(path):
    """The package's top-level part holding ``path`` (``nn``, ``io``, ``__init__``, ...)."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def test_imports_point_one_way():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        if part == "__init__":
            continue  # the package root re-exports the public API
        assert part in ALLOWED, f"{part} is not placed in a layer: add it to ALLOWED"
        violations += [f"{path.relative_to(ROOT)} imports graph_sparse_attn.{other}"
                       for other in package_imports(path) - ALLOWED[part] - {part}]
    assert not violations, "\n".join(violations)


def test_the_import_checker_sees_relative_lazy_and_absolute_imports(tmp_path):
    fake = tmp_path / "graph_sparse_attn" / "ops" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..nn import layers\n    import graph_sparse_attn.train.cli\nfrom ..data import sampling\n")
    assert package_imports(fake, root=tmp_path) == {"nn", "train", "data"}


def test_sources_compile_without_syntax_warnings():
    # Python 3.12 warns about invalid escapes (e.g. LaTeX in a docstring that is not raw).
    import warnings

    for path in [*ROOT.glob("graph_sparse_attn/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py")]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SyntaxWarning)
            warnings.simplefilter("error", DeprecationWarning)  # Python 3.11 reports invalid escapes as this
            compile(path.read_text(), str(path), "exec")

#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the project into it.
# torch is installed first and pinned, so the resolver never swaps in another (CUDA) build;
# set TORCH_SPEC to choose another build, e.g. TORCH_SPEC="torch==2.13.0+cu128".
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.graph_sparse_attn-installed"
wanted="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $torch_spec"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$torch_spec"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
    echo "$wanted" > "$stamp"
fi

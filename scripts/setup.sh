#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install
# poissonvae into it, editable, with its test dependencies. Safe to re-run.
#
#   bash scripts/setup.sh
#
# Environment:
#   PYTHON      interpreter used to create .venv (default: python3)
#   VENV        where the environment goes (default: <repo>/.venv)
#   TORCH_SPEC  what pip installs for PyTorch (default: torch==2.13.0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "setup: creating virtual environment $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
else
    echo "setup: using existing virtual environment $VENV"
fi

# PyTorch first. pyproject.toml only asks for a range (torch>=2.4); left to
# itself pip may resolve that to a multi-GB CUDA build even on a CPU-only
# machine. Installing one specific build first keeps pip from choosing. With
# a GPU, point TORCH_SPEC (or PIP_INDEX_URL) at the build you want, e.g.
#   TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cu124' bash scripts/setup.sh
if "$PY" -c 'import torch' >/dev/null 2>&1; then
    echo "setup: PyTorch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
else
    echo "setup: installing ${TORCH_SPEC:-torch==2.13.0}"
    # TORCH_SPEC is split on spaces on purpose, so it can carry pip options.
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
fi

echo "setup: installing poissonvae (editable) with test dependencies and the Ray extra"
"$PY" -m pip install --quiet -e "$ROOT[test,ray]"

echo "setup: done; try: $VENV/bin/poissonvae --help"

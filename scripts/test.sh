#!/usr/bin/env bash
# Set-up, lint and the default test suite (no GPU, no network; real data read from ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Lint first (ruff pinned in the test extra; its rules: pyproject.toml [tool.ruff]).
.venv/bin/ruff check --quiet src tests benchmarks scripts examples
exec .venv/bin/python -m pytest -q "$@"

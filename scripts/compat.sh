#!/usr/bin/env bash
# Upstream drift, made visible: the default test suite against the OLDEST versions csekit claims
# (scripts/compat/oldest.txt = pyproject.toml's lower bounds, on the oldest Python it claims) and
# against the NEWEST it allows (what `bash scripts/test.sh` and CI install: the newest release of
# everything, torch the local CPU build). Each set gets its own venv (.venv-compat-<set>, kept
# between runs) and the results go to benchmarks/results/compat.{md,json} with the versions
# actually installed, the pytest summary and the machine.
#
# Usage: bash scripts/compat.sh [oldest|newest|both]     (default both; needs PyPI: the oldest set
#        downloads a CUDA build of its torch, ~3 GB, since PyPI has no CPU-only torch for Linux)
set -uo pipefail
cd "$(dirname "$0")/.."
which="${1:-both}"
case "$which" in oldest|newest|both) ;; *) echo "usage: $0 [oldest|newest|both]" >&2; exit 2;; esac
OLDEST_PY="${CSEKIT_COMPAT_OLDEST_PYTHON:-python3.10}"
NEWEST_PY="${CSEKIT_COMPAT_NEWEST_PYTHON:-python3.11}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false CI=1
mkdir -p benchmarks/results
log_dir=benchmarks/results/compat_logs
mkdir -p "$log_dir"

find_python() {  # a working interpreter for the name given (pyenv's versions too)
  local py=$1 c
  "$py" -c "import sys" 2>/dev/null && { echo "$py"; return; }
  for c in "$(pyenv root 2>/dev/null)"/versions/*/bin/"$py"; do
    [ -x "$c" ] && "$c" -c "import sys" 2>/dev/null && { echo "$c"; return; }
  done
}

run_set() {  # name python
  local name=$1 venv=.venv-compat-$1 py
  py=$(find_python "$2")
  if [ -z "$py" ]; then
    echo "$name: $2 not found" | tee "$log_dir/$name.txt"; return 0
  fi
  echo "== $name: $py in $venv"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  if [ "$name" = oldest ]; then
    # the exact lower bounds (no other version may be taken: -c pins them)
    "$venv/bin/python" -m pip install -q -c scripts/compat/oldest.txt \
      "$(grep -E '^torch==' scripts/compat/oldest.txt)" || { echo "$name: torch install failed"; return 0; }
    "$venv/bin/python" -m pip install -q -c scripts/compat/oldest.txt -e ".[test]" \
      > "$log_dir/$name.install.txt" 2>&1 || { echo "$name: install failed (see $log_dir/$name.install.txt)"; return 0; }
  else
    "$venv/bin/python" -c "import torch" 2>/dev/null || \
      "$venv/bin/python" -m pip install -q "${CSEKIT_TORCH_SPEC:-torch==2.13.0}"
    "$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]" \
      > "$log_dir/$name.install.txt" 2>&1 || { echo "$name: install failed"; return 0; }
  fi
  "$venv/bin/python" -m pip freeze > "$log_dir/$name.freeze.txt" 2>/dev/null
  "$venv/bin/python" -V > "$log_dir/$name.python.txt" 2>&1
  local start=$(date +%s)
  "$venv/bin/python" -m pytest -q -p no:cacheprovider > "$log_dir/$name.txt" 2>&1
  local rc=$?
  echo "$name: pytest rc $rc in $(( $(date +%s) - start )) s: $(tail -n 1 "$log_dir/$name.txt")"
}

[ "$which" = newest ] || run_set oldest "$OLDEST_PY"
[ "$which" = oldest ] || run_set newest "$NEWEST_PY"
report_py=.venv-compat-newest/bin/python
[ -x "$report_py" ] || report_py=.venv-compat-oldest/bin/python
PYTHONPATH=src:. "$report_py" scripts/compat/report.py "$log_dir"

#!/usr/bin/env bash
# The main job, offline on a CPU: set-up, STS of the raw model, training with recipes/demo.yaml
# (raw MLM-only bert-mini on part of the local Wikipedia corpus, model selection on STS-B dev),
# then the 7-task STS table of the trained model. Needs ../shared (data and model).
# Usage: bash scripts/demo.sh [OUTPUT_DIR]   (default runs/demo; an interrupted run there is
# resumed, a finished one is left as it is: delete the folder to train again)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
shared="${CSEKIT_SHARED:-../shared}"
out="${1:-runs/demo}"
cfg="${CSEKIT_DEMO_RECIPE:-recipes/demo.yaml}"
# The raw model is evaluated with the pooling the trained model is tested with ([CLS] before the
# MLP for SimCSE's cls + train-only MLP).
pooler="$(.venv/bin/python -c "
import yaml; c = yaml.safe_load(open('$cfg'))
p, m = c.get('pooler', 'cls'), c.get('mlp', 'train')
print('cls_before_pooler' if p == 'cls' and m == 'train' else p)")"
echo "== STS of the untrained model ($pooler pooling) =="
.venv/bin/csekit eval "$shared/models/bert-mini-wiki-mlm" --pooler "$pooler" \
  --data-dir "$shared/data/senteval" --output "$out.before.json"
echo "== training: $cfg (ends with the STS test of the best checkpoint on STS-B dev) =="
# The trained model's table is printed by `csekit train` and written to $out/results.json;
# `csekit eval $out` or SentenceTransformer("$out") load the saved model.
resume=()
[ -d "$out/checkpoints" ] && resume=(--resume)
.venv/bin/csekit train --config "$cfg" --output-dir "$out" "${resume[@]}"

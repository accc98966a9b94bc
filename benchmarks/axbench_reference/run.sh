#!/usr/bin/env bash
# Runs the original AxBench (train -> latent inference -> latent evaluation) for DiffMean, PCA and LAT,
# timing each stage.
#
#   run.sh AXBENCH_SRC MODEL_DIR DATA_DIR LAYER OUT_DIR
#
#   AXBENCH_SRC  an export/checkout of stanfordnlp/axbench (axbench.patch is applied to it, once)
#   MODEL_DIR    float32 HF folder made by convert_model.py (its absolute path is the AxBench model_name)
#   DATA_DIR     AxBench data folder with generate/{metadata.jsonl,train_data.parquet} and
#                inference/latent_eval_data.parquet (e.g. axjax/data/axbench/concept10/prod_2b_l20_v1)
#   LAYER        decoder layer whose output is read (12 for the L20 data, 6 for the L10 data)
#   OUT_DIR      AxBench --dump_dir; must not exist yet (AxBench resumes from state files otherwise)
#
# Env: PYTHON (default: python), MASTER_PORT (default 29571). Per-concept AUROCs land in
# OUT_DIR/evaluate/latent.jsonl; OUT_DIR/auroc.json is collect_auroc.py's summary of them.
set -euo pipefail

if [ $# -ne 5 ]; then
  sed -n 2,16p "$0" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$1" && pwd)
MODEL=$(cd "$2" && pwd)
DATA=$(cd "$3" && pwd)
LAYER=$4
OUT=$5
# Resolved here: AxBench ships a .python-version that pyenv shims would obey inside AXBENCH_SRC.
PY=$("${PYTHON:-python}" -c "import sys; print(sys.executable)")
PORT=${MASTER_PORT:-29571}

if [ -e "$OUT" ]; then
  echo "$OUT exists: give a new OUT_DIR (AxBench would resume from its state files)" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# 1. The patch (idempotent: skipped when already applied).
if (cd "$SRC" && patch -p1 -R --dry-run -s -f < "$HERE/axbench.patch" > /dev/null 2>&1); then
  echo "axbench.patch already applied to $SRC"
else
  (cd "$SRC" && patch -p1 -s -N < "$HERE/axbench.patch")
  echo "applied axbench.patch to $SRC"
fi

# 2. Config and a stub master_data_dir (one-row seed datasets: loaded by DatasetFactory, never read).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false
export OPENAI_API_KEY=${OPENAI_API_KEY:-unused}  # AsyncOpenAI() needs a key; latent mode makes no calls
export AXBENCH_EXTRA_CHAT_MODELS="$MODEL"         # treat the local folder as a chat model (Gemma template)
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
MASTER="$OUT/master_data"
"$PY" -c "
import sys
from datasets import Dataset
for name in ('seed_sentences', 'seed_instructions'):
  Dataset.from_dict({'input': ['unused']}).save_to_disk(sys.argv[1] + '/' + name)
" "$MASTER" > /dev/null 2>&1
CFG="$OUT/config.yaml"
sed -e "s#@MODEL@#$MODEL#g" -e "s#@LAYER@#$LAYER#g" -e "s#@MASTER@#$MASTER#g" "$HERE/no_grad.yaml" > "$CFG"
echo "config: $CFG (model $MODEL, layer $LAYER, data $DATA)"

cd "$SRC"
TORCHRUN=("$PY" -m torch.distributed.run --nproc_per_node=1 --master_port="$PORT")
t0=$(date +%s)

# 3. Train (one concept at a time; each method does its own forward passes over the concept's data).
"${TORCHRUN[@]}" axbench/scripts/train.py --config "$CFG" --dump_dir "$OUT" \
  --overwrite_data_dir "$DATA/generate" 2>&1 | tee "$OUT/train.log"
t1=$(date +%s)

# 4. Latent inference on the pre-generated eval data.
"${TORCHRUN[@]}" axbench/scripts/inference.py --config "$CFG" --dump_dir "$OUT" --mode latent \
  --overwrite_metadata_dir "$DATA/generate" --overwrite_inference_data_dir "$DATA/inference" \
  2>&1 | tee "$OUT/inference.log"
t2=$(date +%s)

# 5. Latent evaluation (AUCROCEvaluator, HardNegativeEvaluator).
"$PY" axbench/scripts/evaluate.py --config "$CFG" --dump_dir "$OUT" --mode latent 2>&1 | tee "$OUT/evaluate.log"
t3=$(date +%s)

"$PY" "$HERE/collect_auroc.py" "$OUT" > "$OUT/auroc.json"
"$PY" -c "
import json, sys
r = json.load(open(sys.argv[1]))
for m, v in r['mean_auroc'].items():
  print(f'{m}: mean AUROC {v:.4f} over {len(r[\"auroc\"][m])} concepts')
" "$OUT/auroc.json"
printf 'timings (s): train %d, latent inference %d, latent evaluation %d, total %d\n' \
  $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) $((t3 - t0)) | tee "$OUT/timings.txt"

#!/usr/bin/env bash
# Runs the original AxBench (train -> latent inference -> latent evaluation), timing each stage. The methods
# are those of the config template: no_grad.yaml (DiffMean, PCA, LAT; the default) or trained.yaml
# (LinearProbe, LsReFT).
#
#   run.sh AXBENCH_SRC MODEL_DIR DATA_DIR LAYER OUT_DIR [CONFIG]
#
#   AXBENCH_SRC  an export/checkout of stanfordnlp/axbench (axbench.patch is applied to it, once)
#   MODEL_DIR    float32 HF folder made by convert_model.py (its absolute path is the AxBench model_name)
#   DATA_DIR     AxBench data folder with generate/{metadata.jsonl,train_data.parquet} and
#                inference/latent_eval_data.parquet (e.g. axjax/data/axbench/concept10/prod_2b_l20_v1)
#   LAYER        decoder layer whose output is read (12 for the L20 data, 6 for the L10 data)
#   OUT_DIR      AxBench --dump_dir; must not exist yet (AxBench resumes from state files otherwise),
#                unless RESUME=1
#   CONFIG       config template (default: $CONFIG, else no_grad.yaml); a bare name is looked up next to
#                this script
#
# Env: PYTHON (default: python), MASTER_PORT (default 29571), CONFIG (see above), RESUME=1 (continue an
# interrupted run in OUT_DIR: stages already finished are skipped, and AxBench's train and latent inference
# resume after the last finished concept from their state files; the timings then cover this call only),
# TRUNCATE=1 (cut the model after LAYER, through truncate/sitecustomize.py: the same results for methods that
# read only that layer, DiffMean, PCA, LAT and LinearProbe, in a fraction of the time; never for LsReFT, and the
# timings are then not AxBench's).
# Per-concept AUROCs land in OUT_DIR/evaluate/latent.jsonl; OUT_DIR/auroc.json is collect_auroc.py's
# summary of them.
set -euo pipefail

if [ $# -ne 5 ] && [ $# -ne 6 ]; then
  sed -n 2,22p "$0" >&2
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
TEMPLATE=${6:-${CONFIG:-no_grad.yaml}}
[ -f "$TEMPLATE" ] || TEMPLATE="$HERE/$TEMPLATE"
[ -f "$TEMPLATE" ] || { echo "no config template $TEMPLATE" >&2; exit 2; }
RESUME=${RESUME:-0}

if [ -e "$OUT" ] && [ "$RESUME" != 1 ]; then
  echo "$OUT exists: give a new OUT_DIR (AxBench would resume from its state files), or set RESUME=1" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# With RESUME=1 the logs are appended to; a stage whose marker OUT/.done_<stage> exists is skipped.
TEE=(tee); [ "$RESUME" = 1 ] && TEE=(tee -a)

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
if [ "${TRUNCATE:-0}" = 1 ]; then
  grep -qE '^ +LsReFT:' "$TEMPLATE" && { echo "TRUNCATE=1 with LsReFT in $TEMPLATE: its loss needs the upper layers" >&2; exit 2; }
  export AXBENCH_TRUNCATE_LAYER="$LAYER" PYTHONPATH="$HERE/truncate:$PYTHONPATH"
fi
MASTER="$OUT/master_data"
"$PY" -c "
import sys
from datasets import Dataset
for name in ('seed_sentences', 'seed_instructions'):
  Dataset.from_dict({'input': ['unused']}).save_to_disk(sys.argv[1] + '/' + name)
" "$MASTER" > /dev/null 2>&1
CFG="$OUT/config.yaml"
sed -e "s#@MODEL@#$MODEL#g" -e "s#@LAYER@#$LAYER#g" -e "s#@MASTER@#$MASTER#g" "$TEMPLATE" > "$CFG"
echo "config: $CFG (from $TEMPLATE; model $MODEL, layer $LAYER, data $DATA)"

cd "$SRC"
TORCHRUN=("$PY" -m torch.distributed.run --nproc_per_node=1 --master_port="$PORT")
t0=$(date +%s)

# 3. Train (one concept at a time; each method does its own forward passes over the concept's data).
if [ ! -e "$OUT/.done_train" ]; then
  "${TORCHRUN[@]}" axbench/scripts/train.py --config "$CFG" --dump_dir "$OUT" \
    --overwrite_data_dir "$DATA/generate" 2>&1 | "${TEE[@]}" "$OUT/train.log"
  touch "$OUT/.done_train"
fi
t1=$(date +%s)

# 4. Latent inference on the pre-generated eval data.
if [ ! -e "$OUT/.done_inference" ]; then
  "${TORCHRUN[@]}" axbench/scripts/inference.py --config "$CFG" --dump_dir "$OUT" --mode latent \
    --overwrite_metadata_dir "$DATA/generate" --overwrite_inference_data_dir "$DATA/inference" \
    2>&1 | "${TEE[@]}" "$OUT/inference.log"
  touch "$OUT/.done_inference"
fi
t2=$(date +%s)

# 5. Latent evaluation (AUCROCEvaluator, HardNegativeEvaluator).
"$PY" axbench/scripts/evaluate.py --config "$CFG" --dump_dir "$OUT" --mode latent 2>&1 | "${TEE[@]}" "$OUT/evaluate.log"
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

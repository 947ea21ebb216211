#!/usr/bin/env bash
# The stage loop every asr-kd recipe shares (recipes/<corpus>/run.sh calls it with its own directory):
# Hinton, Vinyals & Dean (2015), section 4 and the 3% experiment, corpus to report, Kaldi/icefall style.
#
#   run_recipe.sh RECIPE_DIR [options] [hydra overrides]
#   ./run.sh                                   # everything, tiny config (CPU, minutes)
#   ./run.sh --stage 6 --stop-stage 7          # only the baseline and the ensemble
#   ./run.sh --config paper train.lr=0.004     # another config; extra words are hydra overrides
#   ./run.sh --work-dir /scratch/exp1           # data/ and exp/ elsewhere (default: this directory)
#
# Each stage is a library function (asr_kd/stages.py); it leaves exp/stages/<name>/{.done,log.txt,config.yaml,
# summary.json}. A stage whose .done exists is skipped, so a killed run resumes where it stopped
# (add force=true to redo a stage). Stages:
#   0 corpus   1 features   2 lang   3 mono   4 tri   5 graph   6 baseline   7 ensemble   8 soft_targets
#   9 distill  10 small_data   11 decode   12 report
set -euo pipefail

recipe=$(cd "$1" && pwd); shift
export ASR_KD_COMMAND="${ASR_KD_COMMAND:-recipes/$(basename "$recipe")/run.sh $*}"  # recorded in RESULTS.md
stage=0
stop_stage=100
config=tiny
work_dir=""
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --work-dir) work_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) overrides+=("$1"); shift ;;
  esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bash "$repo/recipes/tools/install.sh"
python=${ASR_KD_VENV:-$repo/.venv}/bin/python
export KALDI_ROOT=${KALDI_ROOT:-/tmp} PYTHONUNBUFFERED=1
[ -t 2 ] || export TQDM_MININTERVAL=${TQDM_MININTERVAL:-30}  # progress bars in a log file: a line every 30 s
work_dir=${work_dir:-$recipe}
mkdir -p "$work_dir" && cd "$work_dir" && work_dir=$(pwd)

stages=(corpus features lang mono tri graph baseline ensemble soft_targets distill small_data decode report)
start=$(date +%s)
for i in "${!stages[@]}"; do
  if [ "$i" -ge "$stage" ] && [ "$i" -le "$stop_stage" ]; then
    echo "$(date '+%F %T') stage $i: ${stages[$i]}"
    "$python" -m asr_kd.cli --config-dir "$recipe/conf" --config-name "$config" \
      stage="${stages[$i]}" work_dir="$work_dir" ${overrides[@]+"${overrides[@]}"}
  fi
done
echo "$(date '+%F %T') finished stages $stage..$stop_stage in $(( $(date +%s) - start )) s"

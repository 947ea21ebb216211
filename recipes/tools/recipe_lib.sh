#!/usr/bin/env bash
# Sourced by every recipes/<corpus>/run.sh: option parsing, the install check, `run_stage N NAME`, which selects
# stage NAME (a function of asr_kd/pipeline/stages.py) when N is within --stage..--stop-stage, and `finish`, which
# runs the selected stages in order in one Python process (imports paid once; each stage still has its own log,
# summary and .done marker, and a failure stops the run there). The numbered list of stages is visible in each
# run.sh; tests/test_layout.py checks it against asr_kd.pipeline.stages.STAGES.
#
#   run.sh [--stage N] [--stop-stage M] [--config NAME] [--work-dir DIR] [key=value ...]   (hydra overrides)
#
# Defaults: every stage, the recipe's default config, work dir <recipe>/work/<config> (data/ and exp/), results
# published to <recipe>/results/<config>/ (RESULTS.md, history). With --work-dir the results stay in
# <work dir>/results/, so a scratch run never replaces the committed results of a config.
# A stage whose exp/stages/<name>/.done exists is skipped (add force=true to redo it); a killed run resumes.
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
repo=$(cd "$recipe_dir/../.." && pwd)
python=${ASR_KD_VENV:-$repo/.venv}/bin/python
stage=0
stop_stage=100
config=""
work_dir=""
overrides=()

recipe_help() {  # the calling run.sh's header comment, this file's usage, and the stage list from the code
  sed -n '2,/^set /p' "${BASH_SOURCE[2]}" | sed '$d'
  sed -n '5,11p' "${BASH_SOURCE[0]}"
  echo "# Stages:"
  KALDI_ROOT=/tmp "$python" -m asr_kd.cli stage=list hydra.run.dir=. hydra.output_subdir=null \
    hydra/job_logging=disabled hydra/hydra_logging=disabled 2>/dev/null | sed 's/^/#  /' \
    || echo "#  (run recipes/tools/install.sh first to list them)"
}

parse_args() {  # parse_args DEFAULT_CONFIG "$@"
  config=$1; shift
  # The whole run's clock, install included (the report's time table: where a fresh clone's time goes).
  export ASR_KD_RUN_STARTED; ASR_KD_RUN_STARTED=$(date +%s)
  export ASR_KD_COMMAND="${ASR_KD_COMMAND:-recipes/$(basename "$recipe_dir")/run.sh${*:+ $*}}"  # for RESULTS.md
  while [ $# -gt 0 ]; do
    case "$1" in
      --stage) stage=$2; shift 2 ;;
      --stop-stage) stop_stage=$2; shift 2 ;;
      --config) config=$2; shift 2 ;;
      --work-dir) work_dir=$2; shift 2 ;;
      -h|--help) recipe_help; exit 0 ;;
      *) overrides+=("$1"); shift ;;
    esac
  done
  bash "$repo/recipes/tools/install.sh"
  export ASR_KD_INSTALL_SECONDS=$(( $(date +%s) - ASR_KD_RUN_STARTED ))
  # The code of this checkout, whatever the venv's editable install points at or the work dir holds.
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  export KALDI_ROOT=${KALDI_ROOT:-/tmp} PYTHONUNBUFFERED=1
  [ -t 2 ] || export TQDM_MININTERVAL=${TQDM_MININTERVAL:-30}  # progress bars in a log file: a line every 30 s
  if [ -z "$work_dir" ]; then
    work_dir=$recipe_dir/work/$config
    overrides=("results_dir=$recipe_dir/results/$config" ${overrides[@]+"${overrides[@]}"})
  fi
  mkdir -p "$work_dir" && work_dir=$(cd "$work_dir" && pwd)
  started=$(date +%s)
}

selected=()
run_stage() {  # run_stage N NAME
  local n=$1 name=$2
  if [ "$n" -ge "$stage" ] && [ "$n" -le "$stop_stage" ]; then
    selected+=("$name")
  fi
}

finish() {
  if [ ${#selected[@]} -gt 0 ]; then
    local names
    names=$(IFS=,; echo "${selected[*]}")
    echo "$(date '+%F %T') stages $stage..$stop_stage: ${selected[*]}"
    (cd "$work_dir" && "$python" -m asr_kd.cli --config-dir "$recipe_dir/conf" --config-name "$config" \
      stage="'$names'" work_dir="$work_dir" ${overrides[@]+"${overrides[@]}"})
  fi
  echo "$(date '+%F %T') finished stages $stage..$stop_stage in $(( $(date +%s) - started )) s (work dir $work_dir)"
}

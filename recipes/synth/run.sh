#!/usr/bin/env bash
# asr-kd on the built-in synthetic (text-to-speech) corpus: corpus -> ... -> report, on a CPU in minutes
# with the default tiny config. Options: --stage N --stop-stage M --config NAME --work-dir DIR, then hydra
# overrides (see ../tools/run_recipe.sh --help). Configs: conf/tiny.yaml (CPU), conf/ci.yaml (tests),
# conf/paper.yaml (GPU, 8x2560).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec bash "$here/../tools/run_recipe.sh" "$here" "$@"

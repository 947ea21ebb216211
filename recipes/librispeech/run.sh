#!/usr/bin/env bash
# asr-kd on a local LibriSpeech copy (flac + *.trans.txt, the OpenSLR layout): data prep from that layout,
# then the same stages as the synthetic recipe. Needs corpus.source_dir=/path/to/LibriSpeech; the parts used
# for train/dev/test are set in conf/default.yaml. Options as in ../tools/run_recipe.sh --help.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec bash "$here/../tools/run_recipe.sh" "$here" --config default "$@"

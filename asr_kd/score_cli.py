"""``asr-kd-score`` and ``asr-kd-compare``: sclite-exact WER and paired-bootstrap system comparison on any files.

Someone holding a reference ``text`` and hypotheses from any system (Kaldi, icefall, Whisper, asr-kd) scores
them as Kaldi users would with ``compute-wer``/``sclite``/``compute-wer-bootci``, without running an experiment::

    asr-kd-score --ref data/test/text --hyp exp/decode/baseline/test/hyp.txt [--utt2spk data/test/utt2spk]
                 [--format text|trn] [--out-dir DIR] [--mode all|strict] [--json]
    asr-kd-compare --ref data/test/text --hyp baseline=A/hyp.txt --hyp distilled=B/hyp.txt [--subsets FILE]
                   [--samples 1000] [--seed 0] [--level 0.95] [--method percentile|normal] [--json OUT|-]
    asr-kd-compare --ali exp/tri1_ali/test/pdf.scp --pred baseline=A/pred.scp --pred distilled=B/pred.scp ...

``asr-kd-compare`` compares WER with ``--ref``/``--hyp`` and frame accuracy with ``--ali``/``--pred`` (Kaldi
int-vector scp files of per-frame pdf ids: the alignment, and each system's arg-max predictions). Both tools are
also ``python -m asr_kd.score_cli score|compare ...``. This module only parses arguments and prints: the work is
:mod:`decoding.score_io` and :mod:`asr_kd.evaluation.compare`. Bad input ends in one line on stderr,
``error: <file>:<line>: <message>``, and exit status 2 (``--debug`` shows the traceback instead); an output
that cannot be written exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from asr_kd.evaluation.compare import compare_frame_accuracy, compare_wer, format_comparison
from asr_kd.evaluation.stats import METHODS
from decoding.score import compute_wer, write_scoring_files
from decoding.score_io import FORMATS, format_score, group_summaries, read_transcripts, read_utt_map, write_pralign
from features.atomic import write_text_atomic
from features.errors import InputError
from features.kaldi_io import load_vec_int_scp

__all__ = ["compare_main", "main", "score_main"]

_MODE_HELP = ("utterances of the reference without a hypothesis: 'all' scores them as all deletions and reports "
              "them (default), 'strict' makes them an error")


def _named_file(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    return name, Path(path)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help="transcript files: Kaldi 'text' (<utt> words...) or sclite 'trn' (words... (utt))")
    parser.add_argument("--mode", choices=("all", "strict"), default="all", help=_MODE_HELP)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")


def _score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asr-kd-score", description="WER of hypotheses against a reference, with "
                                "sclite's alignment and counts.")
    p.add_argument("--ref", type=Path, required=True, help="reference transcripts (e.g. data/test/text)")
    p.add_argument("--hyp", type=Path, required=True, help="hypotheses, same format as --ref")
    p.add_argument("--utt2spk", type=Path, help="utt2spk table: adds a per-speaker breakdown")
    p.add_argument("--out-dir", type=Path, help="write errs-NAME.txt, recogs-NAME.txt, pralign-NAME.txt, wer.json")
    p.add_argument("--name", help="NAME of the files in --out-dir (default: the stem of --hyp)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON instead of text")
    _common(p)
    return p


def _score(args: argparse.Namespace) -> None:
    refs = read_transcripts(args.ref, args.format)
    hyps = read_transcripts(args.hyp, args.format, known_ids=refs, require_all=args.mode == "strict")
    result = compute_wer(refs, hyps)
    speakers = group_summaries(result, read_utt_map(args.utt2spk, refs)) if args.utt2spk else None
    if args.out_dir:
        name = args.name or args.hyp.stem
        write_scoring_files(args.out_dir, name, refs, hyps, result)
        write_pralign(args.out_dir / f"pralign-{name}.txt", result, name)
    if args.json:
        report = {"ref": str(args.ref), "hyp": str(args.hyp), **result.summary(),
                  "missing_utts": result.missing_hyps, "speakers": speakers}
        print(json.dumps(report, indent=1))
    else:
        sys.stdout.write(format_score(result, speakers))


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asr-kd-compare", description="Compare two or more systems on one test set: "
                                "each one's WER (or frame accuracy) with a confidence interval, and each pair's "
                                "difference with its paired-bootstrap interval and the probability that one is "
                                "better.")
    p.add_argument("--ref", type=Path, help="reference transcripts (WER mode)")
    p.add_argument("--hyp", type=_named_file, action="append", default=[], metavar="NAME=FILE",
                   help="a system's hypotheses (WER mode; twice or more; the first is the baseline of each pair)")
    p.add_argument("--ali", type=Path, help="alignment pdf ids, Kaldi int-vector scp (frame-accuracy mode)")
    p.add_argument("--pred", type=_named_file, action="append", default=[], metavar="NAME=FILE",
                   help="a system's per-frame arg-max pdf ids, int-vector scp (frame-accuracy mode; twice or more)")
    p.add_argument("--subsets", type=Path, help="utt2subset-like table: adds a breakdown per label")
    p.add_argument("--samples", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the resampling (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--method", choices=METHODS, default="percentile",
                   help="interval: bootstrap 'percentile' (default) or Kaldi compute-wer-bootci's 'normal' "
                        "(replicates' mean +- z * SD)")
    p.add_argument("--share", type=_share_triple, action="append", default=[], metavar="BASE,BETTER,CANDIDATE",
                   help="also report the share of BETTER's gain over BASE that CANDIDATE keeps, with its interval "
                        "(e.g. baseline,ensemble,distilled); repeatable")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT ('-': JSON on stdout only)")
    _common(p)
    return p


def _share_triple(text: str) -> tuple[str, str, str]:
    names = tuple(text.split(","))
    if len(names) != 3 or not all(names):
        raise argparse.ArgumentTypeError(f"expected BASE,BETTER,CANDIDATE system names, got {text!r}")
    return names  # type: ignore[return-value]


def _systems(pairs: Sequence[tuple[str, Path]], flag: str) -> dict[str, Path]:
    systems: dict[str, Path] = {}
    for name, path in pairs:
        if name in systems:
            raise InputError(f"system name {name!r} is given twice with {flag}")
        systems[name] = path
    return systems


def _compare(args: argparse.Namespace) -> None:
    stats_kw = {"num_samples": args.samples, "seed": args.seed, "level": args.level, "method": args.method,
                "shares": args.share}
    if args.ali:
        preds = _systems(args.pred, "--pred")
        ali = load_vec_int_scp(args.ali)
        subsets = read_utt_map(args.subsets, ali) if args.subsets else None
        result = compare_frame_accuracy(ali, {n: load_vec_int_scp(p) for n, p in preds.items()}, subsets=subsets,
                                        **stats_kw)
        inputs = {"ali": str(args.ali), "pred": {n: str(p) for n, p in preds.items()}}
    else:
        refs = read_transcripts(args.ref, args.format)
        hyp_files = _systems(args.hyp, "--hyp")
        systems = {n: read_transcripts(p, args.format, known_ids=refs, require_all=args.mode == "strict")
                   for n, p in hyp_files.items()}
        for name, hyps in systems.items():
            if len(hyps) < len(refs):
                print(f"warning: {hyp_files[name]}: no hypothesis for {len(refs) - len(hyps)} of {len(refs)} "
                      f"utterances, scored as all deletions", file=sys.stderr)
        subsets = read_utt_map(args.subsets, refs) if args.subsets else None
        result = compare_wer(refs, systems, subsets=subsets, **stats_kw)
        inputs = {"ref": str(args.ref), "hyp": {n: str(p) for n, p in hyp_files.items()}}
    result = {**result, "inputs": inputs}
    text = json.dumps(result, indent=1) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
        return
    sys.stdout.write(format_comparison(result))
    if args.json:
        write_text_atomic(Path(args.json), text)


def _check_compare_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """WER mode (--ref, --hyp) or frame mode (--ali, --pred), two systems or more, sane bootstrap settings."""
    if args.ali and (args.ref or args.hyp):
        parser.error("give either --ref/--hyp (WER) or --ali/--pred (frame accuracy), not both")
    if not args.ali and args.pred:
        parser.error("--pred needs --ali")
    if not args.ali and not args.ref:
        parser.error("give --ref and --hyp NAME=FILE twice or more (or --ali and --pred)")
    if len(args.pred if args.ali else args.hyp) < 2:
        parser.error(f"compare needs two systems or more ({'--pred' if args.ali else '--hyp'} NAME=FILE, repeated)")
    if args.samples < 1 or not 0.0 < args.level < 1.0:
        parser.error("--samples must be at least 1 and --level in (0, 1)")


def _run(parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace], None], argv: Sequence[str] | None,
         check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None) -> int:
    """Parse, run, and turn an input error into one line on stderr with exit status 2."""
    args = parser.parse_args(argv)
    if check is not None:
        check(parser, args)
    try:
        work(args)
    except InputError as e:
        if args.debug:
            raise
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def score_main(argv: Sequence[str] | None = None) -> int:
    """``asr-kd-score``: WER, SER and counts of one hypothesis file (see the module docstring)."""
    return _run(_score_parser(), _score, argv)


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``asr-kd-compare``: two or more systems with intervals and paired differences (see the module docstring)."""
    return _run(_compare_parser(), _compare, argv, _check_compare_args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m asr_kd.score_cli score|compare ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tools = {"score": score_main, "compare": compare_main}
    if not argv or argv[0] not in tools:
        print("usage: python -m asr_kd.score_cli {score,compare} [options]  (-h after the tool for its options)",
              file=sys.stderr)
        return 2
    return tools[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())

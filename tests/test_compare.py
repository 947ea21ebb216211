"""System comparison: WER and frame accuracy of several systems, per subset, with paired intervals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from asr_kd.evaluation.compare import compare_frame_accuracy, compare_wer, format_comparison, percent
from asr_kd.evaluation.stats import paired_difference, rate_interval
from decoding.score import compute_wer
from features.errors import InputError

REFS = {f"u{k:02d}": "THE CAT SAT ON THE MAT".split()[: 2 + k % 5] for k in range(30)}
SUBSETS = {u: ("seen" if k % 3 else "unseen") for k, u in enumerate(sorted(REFS))}


def _hyps(errors_every: int) -> dict[str, list[str]]:
    """A copy of REFS with the first word of every ``errors_every``-th utterance substituted."""
    return {u: (["X", *w[1:]] if k % errors_every == 0 else list(w)) for k, (u, w) in enumerate(sorted(REFS.items()))}


def test_compare_wer_counts_intervals_and_pairs() -> None:
    baseline, distilled = _hyps(2), _hyps(4)
    del distilled["u29"]  # a missing hypothesis: all deletions, counted
    result = compare_wer(REFS, {"baseline": baseline, "distilled": distilled, "copy": baseline}, subsets=SUBSETS,
                         num_samples=200, seed=1)
    json.dumps(result, allow_nan=False)
    assert result["metric"] == "wer" and result["higher_is_better"] is False
    assert result["systems"] == ["baseline", "distilled", "copy"]
    assert list(result["groups"]) == ["all", "seen", "unseen"]
    assert result["bootstrap"] == {"num_samples": 200, "seed": 1, "level": 0.95, "method": "percentile",
                                   "resampled": "utterances", "paired": True}
    everything = result["groups"]["all"]
    assert everything["utterances"] == 30
    assert everything["systems"]["distilled"]["counts"] == compute_wer(REFS, distilled).summary()
    assert everything["systems"]["distilled"]["counts"]["missing_hyps"] == 1
    utts = sorted(REFS)
    words = [len(REFS[u]) for u in utts]
    errs = [compute_wer(REFS, baseline).per_utt[u].errors for u in utts]
    expected = rate_interval(errs, words, num_samples=200, seed=1)
    assert everything["systems"]["baseline"]["interval"] == expected.as_dict()
    pairs = {(p["name_a"], p["name_b"]): p for p in everything["pairs"]}
    assert list(pairs) == [("baseline", "distilled"), ("baseline", "copy"), ("distilled", "copy")]
    same = pairs[("baseline", "copy")]
    assert same["diff"]["estimate"] == 0.0 and same["prob_a_better"] == same["prob_b_better"] == 0.0
    assert same["a"] == everything["systems"]["baseline"]["interval"]  # paired: one set of indices for all
    better = pairs[("baseline", "distilled")]
    assert better["diff"]["estimate"] < 0 and better["prob_b_better"] > 0.5
    seen = result["groups"]["seen"]
    assert seen["utterances"] == sum(v == "seen" for v in SUBSETS.values())
    assert seen["systems"]["baseline"]["counts"] == compute_wer(
        {u: REFS[u] for u in REFS if SUBSETS[u] == "seen"}, {u: baseline[u] for u in REFS if SUBSETS[u] == "seen"}
    ).summary()


def test_compare_wer_input_errors() -> None:
    with pytest.raises(InputError, match=r"system 'b'.*no reference"):
        compare_wer(REFS, {"a": _hyps(2), "b": {**_hyps(2), "zz": ["X"]}})
    with pytest.raises(InputError, match="'u00' has no subset label"):
        compare_wer(REFS, {"a": _hyps(2)}, subsets={u: "x" for u in sorted(REFS)[1:]})
    with pytest.raises(InputError, match="reserved"):
        compare_wer(REFS, {"a": _hyps(2)}, subsets={u: "all" for u in REFS})
    with pytest.raises(InputError, match="nothing to score"):
        compare_wer({"u": []}, {"a": {"u": ["X"]}})


def _frames() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ali = {f"u{k}": rng.integers(0, 50, size=20 + k).astype(np.int32) for k in range(12)}
    weak = {u: np.where(np.arange(a.size) % 2 == 0, a, a + 1) for u, a in ali.items()}  # half the frames right
    strong = {u: np.where(np.arange(a.size) % 4 == 0, a + 1, a) for u, a in ali.items()}  # 3/4 right
    return ali, weak, strong


def test_compare_frame_accuracy_known_counts_and_a_system_better_everywhere() -> None:
    ali, weak, strong = _frames()
    subsets = {u: ("even" if int(u[1:]) % 2 == 0 else "odd") for u in ali}
    result = compare_frame_accuracy(ali, {"baseline": weak, "distilled": strong}, subsets=subsets, num_samples=200)
    json.dumps(result, allow_nan=False)
    assert result["metric"] == "frame_accuracy" and result["higher_is_better"] is True
    counts = result["groups"]["all"]["systems"]["baseline"]["counts"]
    frames = sum(a.size for a in ali.values())
    assert counts == {"correct": sum((a.size + 1) // 2 for a in ali.values()), "frames": frames,
                      "utterances": 12, "accuracy": pytest.approx(100.0 * counts["correct"] / frames)}
    pair = result["groups"]["all"]["pairs"][0]
    assert (pair["name_a"], pair["name_b"], pair["prob_b_better"], pair["significant"]) == (
        "baseline", "distilled", 1.0, True)
    assert pair["diff"]["low"] > 0
    utts = sorted(ali)
    expected = paired_difference([(weak[u] == ali[u]).sum() for u in utts], [(strong[u] == ali[u]).sum() for u in utts],
                                 [ali[u].size for u in utts], higher_is_better=True, num_samples=200)
    assert pair["diff"] == expected.diff.as_dict()
    assert result["groups"]["odd"]["utterances"] == 6


def test_compare_frame_accuracy_mismatches_name_the_system_and_utterance() -> None:
    ali, weak, strong = _frames()
    with pytest.raises(InputError, match="system 'b': utterance 'u3' has 22 predicted frames but its alignment has 23"):
        compare_frame_accuracy(ali, {"a": weak, "b": {**strong, "u3": strong["u3"][:-1]}})
    with pytest.raises(InputError, match="system 'b': no prediction for utterance 'u0'"):
        compare_frame_accuracy(ali, {"a": weak, "b": {u: v for u, v in strong.items() if u != "u0"}})
    with pytest.raises(InputError, match="system 'a': utterance 'zz' is not aligned"):
        compare_frame_accuracy(ali, {"a": {**weak, "zz": np.zeros(3, np.int32)}, "b": strong})


def test_format_comparison_tables() -> None:
    text = format_comparison(compare_wer(REFS, {"baseline": _hyps(2), "distilled": _hyps(4)}, num_samples=100))
    assert "### WER (%): all (30 utterances)" in text
    assert "| system | WER | 95% interval | errors | words | ins | del | sub | %SER | no hyp |" in text
    assert "| distilled vs baseline | -" in text
    assert "100 replicates, seed 0, percentile intervals; 'better' = lower WER" in text
    ali, weak, strong = _frames()
    text = format_comparison(compare_frame_accuracy(ali, {"weak": weak, "strong": strong}, num_samples=50,
                                                    method="normal", level=0.9))
    assert "| system | frame accuracy | 90% interval | correct | frames |" in text
    assert "| strong vs weak | +" in text and "| yes |" in text and "normal intervals" in text


def test_shares_of_gain_have_known_answers_and_undefined_gains_are_reported() -> None:
    base, better = _hyps(2), _hyps(6)
    result = compare_wer(REFS, {"base": base, "better": better, "same_as_better": dict(better), "same_as_base":
                                dict(base)}, num_samples=200,
                         shares=[("base", "better", "same_as_better"), ("base", "better", "same_as_base"),
                                 ("base", "same_as_base", "better")])
    kept, none, undefined = result["groups"]["all"]["shares"]
    assert kept["share"]["estimate"] == pytest.approx(1.0) and kept["share"]["low"] == pytest.approx(1.0)
    assert none["share"]["estimate"] == pytest.approx(0.0) and none["share"]["high"] == pytest.approx(0.0)
    assert undefined["share"] is None and "gain" in undefined["undefined"]  # base and "better" are the same
    frames = compare_frame_accuracy({"a": np.array([1, 1, 1, 1]), "b": np.array([2, 2])},
                                    {"hard": {"a": np.array([0, 0, 1, 1]), "b": np.array([0, 0])},
                                     "full": {"a": np.array([1, 1, 1, 1]), "b": np.array([2, 2])},
                                     "soft": {"a": np.array([1, 1, 1, 0]), "b": np.array([2, 0])}},
                                    num_samples=100, shares=[("hard", "full", "soft")])
    share = frames["groups"]["all"]["shares"][0]["share"]
    assert share["estimate"] == pytest.approx((4 - 2) / (6 - 2))  # soft recovers 2 of the 4 frames hard lost
    assert "share of gain kept" in format_comparison(frames)
    with pytest.raises(InputError, match="no system 'nope'"):
        compare_wer(REFS, {"base": base}, shares=[("base", "nope", "base")])


def test_percent_never_prints_negative_zero() -> None:
    assert [percent(x) for x in (-0.004, 0.0, 0.555, -3.02, 0.8)] == ["0%", "0%", "56%", "-302%", "80%"]

"""The report as Markdown: one function per section, each drawn from the dict that
:func:`~asr_kd.pipeline.report.collect.collect` returns (never from numbers of its own)."""
from __future__ import annotations

from typing import Any

from asr_kd.evaluation.compare import percent
from asr_kd.pipeline.report.collect import CONVERGENCE_POINTS, FALL_POINTS, NO_WHOLE_RUN
from asr_kd.pipeline.report.paper import PAPER_SHARE_KEPT, PAPER_SMALL, PAPER_SMALL_GAP, PAPER_TABLE1
from asr_kd.pipeline.report.statistics import (
    FIDELITY,
    SMALL_SOFT,
    SMALL_UNLABELED,
    TRANSFER,
    UNLABELED_STUDENT,
    lookup,
    share_verdict,
)

UNLABELED_TARGET, UNLABELED_LOW = 0.85, 0.75
"""What the untranscribed-pool student is held to: keep at least 85% of the ensemble's frame-accuracy gain on dev and
test, with the 95% interval's lower end at or above 75%."""


def fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_interval(cell: dict | None, digits: int = 1, signed: bool = False) -> str:
    """``56.3 [55.1, 57.5]`` from an interval dict (``-`` when missing)."""
    if not cell:
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    est, low, high = (cell[k] + 0.0 for k in ("estimate", "low", "high"))  # + 0.0: no "-0.00"
    return f"{f.format(est)} [{f.format(low)}, {f.format(high)}]"


def _table1_md(r: dict) -> list[str]:
    lines = ["## Table 1 analogue: frame accuracy and WER (%), 95% intervals", "",
             "| system | dev frame acc | test frame acc | test acc seen / unseen voice | dev WER | test WER "
             "| test WER seen / unseen | paper: frame acc / WER |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"baseline": "baseline single model", "ensemble": f"{_n_members(r)}x ensemble",
             "distilled": "distilled single model"}
    rows = {key: (label, r["table1"][key], f"{PAPER_TABLE1[key][0]} / {PAPER_TABLE1[key][1]}")
            for key, label in names.items()}
    if r.get("unlabeled"):
        rows[UNLABELED_STUDENT] = (_pool_label(r["unlabeled"]), r["unlabeled"]["row"], "- (not in the paper)")
    for label, row, paper in rows.values():
        lines.append(f"| {label} | {fmt_interval(row['dev_frame_acc'])} | {fmt_interval(row['test_frame_acc'])} | "
                     f"{fmt(lookup(row, 'test_seen_frame_acc', 'estimate'))} / "
                     f"{fmt(lookup(row, 'test_unseen_frame_acc', 'estimate'))} | {fmt_interval(row['dev_wer'])} | "
                     f"{fmt_interval(row['test_wer'])} | {fmt(lookup(row, 'test_seen_wer', 'estimate'))} / "
                     f"{fmt(lookup(row, 'test_unseen_wer', 'estimate'))} | {paper} |")
    if r["gmm"]:
        lines += ["", f"GMM-HMM (tri1) baseline: dev WER {fmt(r['gmm']['dev']['all'])}%, "
                      f"test WER {fmt(r['gmm']['test']['all'])}% "
                      f"(seen / unseen voice {fmt(r['gmm']['test'].get('seen'))} / "
                      f"{fmt(r['gmm']['test'].get('unseen'))}%)."]
    return lines


def _pool_label(unlabeled: dict) -> str:
    """The untranscribed-pool student's row label: its transfer set's size as a multiple of the training frames."""
    return f"distilled, transfer set = train + untranscribed pool ({unlabeled['pool']['size']:.1f}x train)"


def _transfer_md(r: dict) -> list[str]:
    """The untranscribed-pool arm: what its transfer set held, the share of the ensemble's gain it keeps against the
    target it is held to, and the research curve over transfer-set size and width."""
    u = r.get("unlabeled")
    if not u:
        return []
    pool = u["pool"]
    lines = ["## Distillation on untranscribed audio (the paper's section 2: a transfer set without transcripts)", "",
             f"Transfer set: the {pool['labeled_frames']:,} training frames (soft and hard targets) plus "
             f"{pool['unlabeled_frames']:,} frames of {pool['unlabeled_utts']} untranscribed utterances (soft targets "
             f"only), {pool['size']:.1f}x the training frames; the ensemble's soft targets at T={u['temperature']:g} "
             f"(the temperature the sweep chose on dev), the paper arm's objective and schedule "
             f"({u['epochs_run']} epochs).", ""]
    lines += _share_md("Share of the ensemble's gain kept by the student with the untranscribed pool:", u["gain_kept"],
                       f"target: {percent(UNLABELED_TARGET)}, lower end >= {percent(UNLABELED_LOW)}")
    parts = []
    for split in ("dev", "test"):
        share = lookup(u, "gain_kept", "frames", split, "share")
        if share:
            met = share["estimate"] >= UNLABELED_TARGET and share["low"] >= UNLABELED_LOW
            parts.append(f"on {split} {_share_iv(share)}: {'met' if met else '**missed**'}")
    if parts:
        lines += ["", f"Target (at least {percent(UNLABELED_TARGET)} of the frame-accuracy gain kept, the interval's "
                      f"lower end at or above {percent(UNLABELED_LOW)}): " + "; ".join(parts) + "."]
    wer = next((c for c in r["comparisons"] if c["b"] == UNLABELED_STUDENT and c["a"] == "ensemble"
                and c["metric"] == "WER" and c["group"] == "test"), None)
    if wer:
        d = wer["diff"]
        verdict = "worse than the ensemble's beyond the interval" if d["low"] > 0 else \
            "not worse than the ensemble's beyond the interval"
        lines += ["", f"Test WER minus the ensemble's: {fmt_interval(d, 2, signed=True)} points: {verdict}."]
    curve = u.get("curve") or {}
    if curve:
        lines += ["", "Transfer-set size against capacity (the research curve): each student distilled at the same "
                      "temperature on the training set plus a nested draw of the pool; share kept of the ensemble's "
                      "frame-accuracy gain and agreement with the ensemble's arg-max on the student's own transfer set "
                      "and on dev. Too little data shows as a gap between the two agreements that more audio closes; "
                      "too little capacity as a share that the wider student raises at every size.", "",
                  "| transfer set (x train) | hidden width | dev frame acc | share kept, dev | share kept, test "
                  "| agreement, transfer set | agreement, dev | epochs |", "|---|---|---|---|---|---|---|---|"]
        for c in sorted(curve.values(), key=lambda c: (c["width"], c["size"])):
            kept = [_share_iv(c["kept"][sp]) if c["kept"].get(sp) else "-" for sp in ("dev", "test")]
            lines.append(f"| {c['size']:g} | {c['hidden_dim']} ({c['width']:g}x) | "
                         f"{fmt_interval(c['dev_frame_acc'])} | {kept[0]} | {kept[1]} | "
                         f"{fmt(lookup(c, 'agreement', 'transfer'))} | {fmt(lookup(c, 'agreement', 'dev'))} | "
                         f"{c['epochs_run']} |")
        lines += ["", "![transfer-set size against capacity](transfer_curve.png)"]
    return lines


def _n_members(r: dict) -> int | str:
    return len(lookup(r, "ensemble_members", "dev", "members") or []) or "N"


def _share_iv(share: dict) -> str:
    return f"{percent(share['estimate'])} [{percent(share['low'])}, {percent(share['high'])}]"


def _share_cell(row: dict | None) -> str:
    """A share-of-gain cell: the share with its interval, ``undefined (no gain)``, or ``-`` when not measured."""
    if not row:
        return "-"
    return _share_iv(row["share"]) if row["share"] else "undefined (no gain)"


def _share_md(title: str, shares: dict, paper: str) -> list[str]:
    groups = sorted({g for rows in shares.values() for g in rows}, key=_group_order)
    if not groups:
        return []
    lines = [title, "", "| metric | " + " | ".join(groups) + f" | {paper} |", "|---" * (len(groups) + 2) + "|"]
    for metric, label in (("frames", "frame accuracy"), ("wer", "WER")):
        cells = [_share_cell(shares.get(metric, {}).get(g)) for g in groups]
        lines.append(f"| {label} | " + " | ".join(cells) + " | |")
    return lines


def _paper_claim_md(shares: dict) -> list[str]:
    """One sentence per split on the paper's claim for the frame-accuracy share, so the report says it outright."""
    rows = shares.get("frames", {})
    parts = [f"on {g} {_share_iv(row['share'])}: {share_verdict(row['share'], PAPER_SHARE_KEPT)}"
             for g in ("dev", "test") if (row := rows.get(g)) and row["share"]]
    if not parts:
        return []
    return ["", f"The paper's claim, that the distilled model keeps more than {percent(PAPER_SHARE_KEPT)} of the "
            "ensemble's frame-accuracy gain: " + "; ".join(parts) + "."]


def _ensemble_size_md(r: dict) -> list[str]:
    """The ensemble-size curve beside the share: where on it the distilled model lands (seed noise applies: the curve
    follows one order of the members)."""
    sizes = r.get("ensemble_size") or {}
    if not sizes:
        return []
    n = max(len(v["by_size"]) for v in sizes.values())
    lines = ["", "Ensemble size: frame accuracy (%) of the first n members combined, and how many members the "
             "distilled model is worth (the largest n whose ensemble it matches or beats).", "",
             "| set | " + " | ".join(f"n={i}" for i in range(1, n + 1)) + " | distilled | worth |",
             "|---" * (n + 3) + "|"]
    for split, v in sizes.items():
        lines.append(f"| {split} | " + " | ".join(f"{a:.2f}" for a in v["by_size"]) + f" | {v['distilled']:.2f} | "
                     f"{v['distilled_worth']} of {len(v['by_size'])} |")
    return lines + ["", "![ensemble size](ensemble_size.png)"]


def _fidelity_md(r: dict) -> list[str]:
    """The student's agreement with the ensemble on its transfer set (train) and on new speech, beside the
    baseline's (what a model trained on the hard targets alone shares with the ensemble)."""
    fid = r.get("fidelity") or {}
    if not fid:
        return []
    splits = list(fid)
    systems = [s for s in (*FIDELITY, UNLABELED_STUDENT) if s in fid[splits[0]]]
    named = {"train": "train (the paper's transfer set)", TRANSFER: "train + untranscribed pool"}
    lines = ["", "How closely a single model copies the ensemble: the share of frames (%) where its arg-max pdf is the "
             "ensemble's, 95% intervals.", "",
             "| system | " + " | ".join(named.get(sp, sp) for sp in splits) + " |", "|---" * (len(splits) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(fmt_interval(fid[sp].get(s)) for sp in splits) + " |" for s in systems]
    lines.append(f"| {FIDELITY[1]} - {FIDELITY[0]} (points) | "
                 + " | ".join(fmt_interval(fid[sp]["diff"], signed=True) for sp in splits) + " |")
    if "train" in fid and "dev" in fid:
        def gap(system: str) -> str:
            d = fid["train"][system]["estimate"] - fid["dev"][system]["estimate"]
            return f"{abs(d):.1f} points {'fewer' if d >= 0 else 'more'} on new speech"

        train, dev = fid["train"]["distilled"]["estimate"], fid["dev"]["distilled"]["estimate"]
        lines += ["", f"The distilled model agrees with the ensemble on {train:.1f}% of its transfer set's frames and "
                  f"on {dev:.1f}% of dev frames: {gap('distilled')} (the baseline: {gap('baseline')})."]
        if TRANSFER in fid and UNLABELED_STUDENT in fid["dev"]:
            own, dev_u = fid[TRANSFER][UNLABELED_STUDENT]["estimate"], fid["dev"][UNLABELED_STUDENT]["estimate"]
            lines[-1] += (f" The student with the untranscribed pool agrees on {own:.1f}% of its own transfer set's "
                          f"frames and on {dev_u:.1f}% of dev frames ({abs(own - dev_u):.1f} points "
                          f"{'fewer' if own >= dev_u else 'more'} on new speech).")
    return lines


def _group_order(g: str) -> tuple[int, str]:
    return (["dev", "test", "test seen", "test unseen"].index(g) if g in ("dev", "test", "test seen",
                                                                          "test unseen") else 9, g)


def _claims_md(r: dict) -> list[str]:
    if not r["comparisons"]:
        return []
    lines = ["## Which differences are real (paired bootstrap over utterances, 95% intervals)", "",
             "B - A in points; for frame accuracy + means B is better, for WER - means B is better. "
             "*Significant* means the interval excludes 0.", "",
             "| claim (B vs A) | metric | set | B - A [95% interval] | P(B better) | significant |",
             "|---|---|---|---|---|---|"]
    for c in r["comparisons"]:
        lines.append(f"| {c['claim']} | {c['metric']} | {c['group']} | {fmt_interval(c['diff'], 2, signed=True)} | "
                     f"{c['prob_b_better']:.3f} | {'**yes**' if c['significant'] else 'no'} |")
    members = r.get("ensemble_members") or {}
    if members:
        lines += ["", "Seed noise for reference: the ensemble's members are the same model trained from different "
                      "random initialisations; their frame accuracy spreads by "
                  + ", ".join(f"{split} {min(m['members']):.1f}-{max(m['members']):.1f} "
                              f"(sd {m['member_std']:.2f})" for split, m in members.items())
                  + " points. A difference within that spread is what retraining alone can give."]
    lines += ["", "![comparisons](comparisons.png)"]
    return lines


def _small_objective(small: dict) -> str:
    """How the 3% soft-target models were trained: their targets and the temperature dev chose."""
    classes = "all classes" if small.get("top_k") is None else f"the top {small['top_k']} classes"
    text = (f"soft targets over {classes}, hard-target weight {small.get('hard_weight', 0):g}, "
            f"at T={small['temperature']:g}")
    by_t = lookup(small, "systems", "small_soft", "dev_by_temperature")
    if not by_t:
        return text + "."
    dev = ", ".join(f"T={t}: {acc:.2f}" for t, acc in by_t.items())
    return text + f" (chosen on dev frame accuracy: {dev})."


def _small_md(r: dict) -> list[str]:
    small = r.get("small_data")
    if not small:
        return []
    pct = f"{small['fraction_percent']:g}%"
    hard_es = ", early stopping" if small.get("hard_early_stopping") else ""
    soft_es = ", early stopping" if small.get("soft_early_stopping") else " (no early stopping)"
    lines = ["## Soft targets as a regularizer (the paper's 3% experiment): frame accuracy (%), 95% intervals", "",
             f"Training subset: {pct} of the training utterances ({small['num_utts']} utterances, "
             f"{small['num_frames']} frames); {_small_objective(small)}", "",
             "| system and training set | train frame acc | dev frame acc | test frame acc | test WER "
             "| paper: train / test |", "|---|---|---|---|---|---|"]
    for key, row in r["small_data_table"].items():
        pool = lookup(r, "unlabeled", "pool")
        label = {"baseline_full": "baseline, 100%", "small_hard": f"baseline, {pct} (hard targets{hard_es})",
                 SMALL_UNLABELED: f"soft targets of the full-data ensemble, {pct} + the untranscribed pool "
                                  f"({fmt(lookup(pool, 'unlabeled_frames'), 0)} frames), "
                                  f"T={fmt(row.get('temperature'), 0)}, the students' schedule"}.get(
            key, f"soft targets of the full-data {row['teacher']}, {pct}"
                 + (f", T={row['temperature']:g}" if row.get("temperature") else "") + soft_es)
        paper = PAPER_SMALL.get("small_soft" if key in SMALL_SOFT else key, ("-", "-"))
        lines.append(f"| {label} | {fmt(row['train'])} | {fmt_interval(row['dev'])} | {fmt_interval(row['test'])} | "
                     f"{fmt_interval(row['test_wer'])} | {paper[0]} / {paper[1]} |")
    for key, shares in r["small_data_recovered"].items():
        teacher = r["small_data_table"][key]["teacher"] + ("'s, with the untranscribed pool," if key == SMALL_UNLABELED
                                                           else "'s")
        lines += [""] + _share_md(f"Share of the gap between the 3% hard-target model and the full-data baseline "
                                  f"that the {teacher} soft targets close:", shares,
                                  PAPER_SMALL_GAP if key != SMALL_UNLABELED else "not in the paper")
    curves = [c for c in r["convergence"] if c["model"].startswith("small_data/") and c["best_dev_acc"] is not None]
    if curves:
        lines += ["", f"Dev frame accuracy over training (a model *falls* when its last epoch ends more than "
                      f"{FALL_POINTS} point below its best):", ""]
        for c in curves:
            change = c["last_dev_acc"] - c["best_dev_acc"]
            lines.append(f"- {c['model'].split('/', 1)[1]}: best {c['best_dev_acc']:.2f} at epoch {c['best_epoch']} "
                         f"of {c['epochs']}, last {c['last_dev_acc']:.2f} ({change:+.2f}): "
                         f"{'falls' if -change > FALL_POINTS else 'does not fall'}.")
    return lines


def _convergence_md(r: dict) -> list[str]:
    rows = r["convergence"]
    if not rows:
        return []
    flagged = [c for c in rows if not c["converged"]]
    lines = ["## Convergence", "",
             f"Every model trains until its dev criterion stops it; a model whose last epoch still raised its best dev "
             f"frame accuracy by more than {CONVERGENCE_POINTS} points, or that hit its epoch cap, is flagged. "
             + (f"**Flagged: {', '.join(c['model'] for c in flagged)}.**" if flagged else "None is flagged."), "",
             "| model | epochs | best dev acc (epoch) | last epoch's gain over the best before it | stopped because "
             "| converged |",
             "|---|---|---|---|---|---|"]
    for c in rows:
        lines.append(f"| {c['model']} | {c['epochs']} | {fmt(c['best_dev_acc'], 2)} ({c['best_epoch']}) | "
                     f"{fmt(c['last_epoch_gain'], 2)} | {c['stopped']} | {'yes' if c['converged'] else '**no**'} |")
    return lines


def _cost_md(r: dict) -> list[str]:
    if not r["cost"]:
        return []
    lines = ["## What each system costs to run", "",
             "Acoustic-model time is measured on one CPU thread (and on the GPU when there is one) over the first "
             "dev frames, as seconds per second of audio (RTF); decoding RTF per core is measured on test.", "",
             "| system | parameters | MACs / frame | file size (MB) | AM RTF, 1 CPU thread | AM RTF, GPU "
             "| decoding RTF |", "|---|---|---|---|---|---|---|"]
    for name, c in r["cost"].items():
        lines.append(f"| {name} | {c['params']:,} | {c['macs_per_frame']:,} | {c['file_bytes'] / 1e6:.2f} | "
                     f"{fmt(c['cpu1_rtf'], 4)} | {fmt(c['gpu_rtf'], 5)} | {fmt(c['decode_rtf'], 3)} |")
    return lines


def _teaching_notes(students: dict) -> list[str]:
    """What the "teacher / input" and "budget" cells mean, where some student departs from the stored targets on
    clean input or from the plain dev-criterion budget."""
    soft = {name: st for name, st in students.items() if st["targets"] == "soft"}
    notes = []
    if any((st.get("teacher") or "stored") != "stored" or st.get("augment") for st in soft.values()):
        notes.append("Teacher: stored = the ensemble's targets computed once on the clean frames; online = computed "
                     "inside every step on the clean frames; consistent = computed inside every step on the very "
                     "input the student got, augmentation included.")
    augments: dict[str, list[str]] = {}
    for name, st in soft.items():
        if st.get("augment"):
            augments.setdefault(st["augment"], []).append(name)
    for augment, names in augments.items():
        notes.append(f"Augmented input ({', '.join(names)}): {augment}, drawn afresh for every window at every "
                     "step.")
    if any(st.get("min_epochs") for st in students.values()):
        notes.append("Budget \">= n\": the dev criterion may not stop the student before epoch n (patient training).")
    return ["", *notes] if notes else []


def _students_md(r: dict) -> list[str]:
    if not r["students"]:
        return []
    cost = r["cost"]
    lines = ["## Extra students: ablations and sizes (95% intervals; share = of the ensemble's gain over the "
             "baseline, test frame accuracy)", "",
             "| student | targets | shape | params | MACs / frame | AM RTF 1 thread | T / hard weight / top-k "
             "| teacher / input | budget (epochs) | dev frame acc | test frame acc | test WER | share kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, st in r["students"].items():
        c = cost.get(name, {})
        soft = st["targets"] == "soft"
        objective = f"{st['temperature']:g} / {st['hard_weight']:g} / {st['top_k'] or 'all'}" if soft else "-"
        teaching = f"{st.get('teacher') or 'stored'} / {'augmented' if st.get('augment') else 'clean'}" if soft \
            else "-"
        budget = st["budget"] + (f", >= {st['min_epochs']}" if st.get("min_epochs") else "")
        kept = st["kept_frame_acc"]
        lines.append(f"| {name} | {st['targets']} | {st['hidden_layers']}x{st['hidden_dim']} | {st['params']:,} | "
                     f"{c.get('macs_per_frame', 0):,} | {fmt(c.get('cpu1_rtf'), 4)} | {objective} | {teaching} | "
                     f"{budget} ({st['epochs_run']}) | {fmt_interval(st['dev_frame_acc'])} | "
                     f"{fmt_interval(st['test_frame_acc'])} | {fmt_interval(st['test_wer'])} | "
                     + (f"{percent(kept['estimate'])} [{percent(kept['low'])}, {percent(kept['high'])}]"
                        if kept else "-") + " |")
    lines += _teaching_notes(r["students"])
    if r["distillation_gain"]:
        lines += ["", "Distillation gain per size (distilled - hard-target student of the same shape, test; every "
                      "such pair, named, since one shape may hold several of each):", "",
                  "| shape | params | hard-target student | distilled student | frame accuracy | significant | WER "
                  "| significant |", "|---|---|---|---|---|---|---|---|"]
        for g in r["distillation_gain"]:
            fa, wer = g.get("frame_acc"), g.get("wer")
            lines.append(f"| {g['shape']} | {g['params']:,} | {g['hard']} | {g['distilled']} | "
                         f"{fmt_interval(fa, 2, True)} | "
                         f"{'**yes**' if fa and fa['significant'] else 'no'} | {fmt_interval(wer, 2, True)} | "
                         f"{'**yes**' if wer and wer['significant'] else 'no'} |")
    reference = lookup(r["gain_kept"], "frames", "test", "share")
    if reference:
        within = [(st["params"], name) for name, st in r["students"].items()
                  if st["targets"] == "soft" and st.get("size_sweep") and st["kept_frame_acc"]
                  and st["kept_frame_acc"]["estimate"] >= reference["low"]]
        lines += ["", "Smallest distilled student whose share of the ensemble's gain (test frame accuracy) lies within "
                      f"the 95% interval of the member-shaped distilled model's ({percent(reference['estimate'])} "
                      f"[{percent(reference['low'])}, {percent(reference['high'])}]) or above it: "
                  + (f"**{min(within)[1]}** ({min(within)[0]:,} parameters)." if within else "**none**.")]
    lines += ["", "![accuracy against cost](cost_accuracy.png)"]
    return lines


def _setup_md(r: dict) -> list[str]:
    """What the numbers were measured on: corpus, lexicon/LM, tied states, alignment quality, graph."""
    lines = ["## Set-up", ""]
    splits = lookup(r["corpus"], "splits") or {}
    if splits:
        lines += ["| split | utterances | hours | speakers | words |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v.get('utts')} | {fmt(v.get('hours'), 2)} | {v.get('speakers')} | {v.get('words')} |"
                  for k, v in splits.items()]
        lines.append("")
    ppl = lookup(r["lang"], "perplexity") or {}
    if ppl:
        lines.append("Trigram LM: " + ", ".join(
            f"{k} perplexity {fmt(v.get('ppl'))} (OOV {fmt(100 * v.get('oov_rate', 0), 2)}%)"
            for k, v in ppl.items()) + f"; vocabulary {lookup(r['lang'], 'vocabulary')} words.")
    if r["tree"]:
        lines.append(f"GMM-HMM: {r['tree'].get('num_pdfs')} tied states (the DNN's output classes), "
                     f"{r['tree'].get('num_gauss')} Gaussians.")
    if r["graph"]:
        lines.append(f"HCLG: {r['graph'].get('HCLG_states')} states, {r['graph'].get('HCLG_arcs')} arcs, built in "
                     f"{fmt(r['graph'].get('total_seconds'))} s.")
    failed = {k.split("/")[-1]: v for k, v in r["alignment"].items() if k.startswith("align/")}
    if failed:
        lines.append("Forced alignment (the DNN's frame labels): " + ", ".join(
            f"{split} {v.get('num_failed')} of {v.get('num_utts')} utterances failed" for split, v in failed.items())
            + " (failed ones are left out of frame accuracy, still decoded and scored).")
    bounds = {k.split("/")[-1]: v for k, v in r["alignment"].items() if k.startswith("boundaries")}
    if bounds:
        lines += ["", "Forced-alignment phone boundaries against the synthesizer's own timings "
                      "(test holds the unseen voice):", "",
                  "| split | phones matched | within 20 ms | within 40 ms | median error (ms) |",
                  "|---|---|---|---|---|"]
        for split, v in bounds.items():
            lines.append(f"| {split} | {v.get('matched_phones')}/{v.get('ref_phones')} | "
                         f"{fmt(100 * v['within_20ms'])}% | {fmt(100 * v['within_40ms'])}% | "
                         f"{fmt(1000 * v['median_abs_error_s'])} |")
        lines += _boundaries_by_speaker_md(bounds)
    return lines


def _boundaries_by_speaker_md(bounds: dict[str, dict]) -> list[str]:
    """Within-20-ms share per speaker and split: each synthesizer labels phones its own way, and one voice with an
    off reference hides in the overall share."""
    speakers = sorted({g for v in bounds.values() for g in v.get("by_group", {})})
    if not speakers:
        return []
    lines = ["", "By speaker: phone boundaries within 20 ms (boundaries compared):", "",
             "| speaker | " + " | ".join(bounds) + " |", "|---|" + "---|" * len(bounds)]
    for speaker in speakers:
        cells = [f"{fmt(100 * b['within_20ms'])}% ({b['boundaries']})" if (b := v.get("by_group", {}).get(speaker))
                 else "-" for v in bounds.values()]
        lines.append(f"| {speaker} | " + " | ".join(cells) + " |")
    return lines


def _details_md(r: dict) -> list[str]:
    lines = []
    if r["temperature_sweep"]:
        lines += ["## Temperature sweep (student, frame accuracy %)", "", "| T | dev | test | epochs |",
                  "|---|---|---|---|"]
        for t, v in r["temperature_sweep"].items():
            lines.append(f"| {t} | {fmt(lookup(v, 'dev', 'all'), 2)} | {fmt(lookup(v, 'test', 'all'), 2)} | "
                         f"{v.get('epochs_run', '-')} |")
        lines += ["", f"Chosen on dev: T = {r['best_temperature']}."]
        if r.get("schedules"):
            lines[-1] += (f" Learning-rate schedule of the students: {r['schedules']['students']}; of the baseline "
                          f"and the members: {r['schedules']['members']} (asr_kd/nn/train.py says why).")
        lines += ["", "![temperature sweep](temperature_sweep.png)"]
    members = r.get("ensemble_members")
    if members:
        lines += ["", "## Ensemble members (frame accuracy %)", "",
                  "| split | members | worst | mean +- sd | best | ensemble |", "|---|---|---|---|---|---|"]
        for split, m in members.items():
            accs = m["members"]
            lines.append(f"| {split} | {len(accs)} | {min(accs):.2f} | {m['member_mean']:.2f} +- "
                         f"{m['member_std']:.2f} | {max(accs):.2f} | {m['ensemble']:.2f} |")
    if r["soft_targets"]:
        lines += ["", "Stored soft targets: " + ", ".join(
            f"{k}: {v['bytes_per_frame']:.0f} B/frame, top-k mass {100 * v['mean_mass_kept']:.0f}%"
            for k, v in r["soft_targets"].items()) + "."]
    if r["decoding"]:
        lines += ["", "## Decoding", "", "A scale chosen at an end of the scales tried is marked *(end)*: dev would "
                  "have gone further than the search allowed.", "",
                  "| system | acoustic scale (chosen on dev) | scales tried on dev | RTF per core (test) "
                  "| no surviving path dev / test | no final state dev / test |", "|---|---|---|---|---|---|"]
        for name, d in r["decoding"].items():
            chosen, tried = _scale_cells(d)
            lines.append(f"| {name} | {chosen} | {tried} | {fmt(d['rtf'], 3)} | {d['no_path']['dev']} / "
                         f"{d['no_path']['test']} | {d['no_final_state']['dev']} / {d['no_final_state']['test']} |")
    peaks = r.get("stage_peak_memory_mb") or {}
    lines += ["", "## Where the time and memory went", "",
              "Peak memory: the stage's process and every worker and rank it started, proportional set size (a page "
              "shared by n processes counts 1/n in each).", "",
              "| stage | seconds | peak memory (MB) |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f} | {fmt(peaks.get(k), 0)} |" for k, v in r["stage_seconds"].items()]
    run = r.get("run_seconds")
    if run:
        lines += [f"| install (recipes/tools/install.sh) | {run['install']:.0f} | - |",
                  f"| start-up, report and the rest | {run['other']:.0f} | - |",
                  f"| **whole run, wall clock** | **{run['wall']:.0f}** | - |"]
    else:
        lines += ["", f"Install and start-up are not counted: {NO_WHOLE_RUN}."]
    lines += ["", "![training curves](training_curves.png)"]
    return lines


def _scale_cells(d: dict) -> tuple[str, str]:
    """The decoding table's chosen-scale cell (marked when it is an end of the scales tried) and scales-tried cell."""
    tried, chosen = d.get("scales_tried") or [], d["acoustic_scale"]
    if not tried:
        return f"{chosen}", "-"
    end = " *(end)*" if len(tried) > 1 and chosen in (tried[0], tried[-1]) else ""
    return f"{chosen}{end}", ", ".join(f"{t:g}" for t in tried)


def at_a_glance(r: dict) -> list[str]:
    """The paper's rows in one small table: Table 1, the share of the ensemble's gain the distilled model keeps,
    and the 3% experiment, each beside the paper's number. The README shows this table of the committed tiny run
    (a test holds the two together)."""
    t1, small = r["table1"], r.get("small_data_table") or {}
    best = r.get("best_temperature")
    lines = ["## The paper's rows at a glance (%, 95% intervals)", "",
             "| | dev frame acc | test frame acc | test WER | paper |", "|---|---|---|---|---|"]
    names = {"baseline": "baseline", "ensemble": f"{_n_members(r)}x ensemble",
             "distilled": "distilled" + (f" (T={best:g}, chosen on dev)" if best is not None else "")}
    for key, label in names.items():
        row = t1[key]
        paper = f"frame acc {PAPER_TABLE1[key][0]}, WER {PAPER_TABLE1[key][1]}"
        lines.append(f"| {label} | {fmt_interval(row['dev_frame_acc'])} | {fmt_interval(row['test_frame_acc'])} | "
                     f"{fmt_interval(row['test_wer'])} | {paper} |")
    kept = r["gain_kept"]
    cells = [_share_cell(lookup(kept, metric, split)) for metric, split in
             (("frames", "dev"), ("frames", "test"), ("wer", "test"))]
    lines.append("| share of the ensemble's gain kept by the distilled model | " + " | ".join(cells)
                 + f" | more than {percent(PAPER_SHARE_KEPT)} |")
    u = r.get("unlabeled")
    if u:
        row = u["row"]
        lines.append(f"| {_pool_label(u)} | {fmt_interval(row['dev_frame_acc'])} | "
                     f"{fmt_interval(row['test_frame_acc'])} | {fmt_interval(row['test_wer'])} | - |")
        cells = [_share_cell(lookup(u["gain_kept"], metric, split)) for metric, split in
                 (("frames", "dev"), ("frames", "test"), ("wer", "test"))]
        lines.append("| share of the ensemble's gain kept with the untranscribed pool | " + " | ".join(cells)
                     + " | - |")
    soft = small.get("small_soft") or {}
    for key, label in (("small_hard", "3% of the data, hard targets"),
                       ("small_soft", "3% of the data, soft targets of the ensemble"
                        + (f" (T={soft['temperature']:g})" if soft.get("temperature") else ""))):
        row = small.get(key)
        if row:
            lines.append(f"| {label} | {fmt_interval(row['dev'])} | {fmt_interval(row['test'])} | "
                         f"{fmt_interval(row['test_wer'])} | test frame acc {PAPER_SMALL[key][1]} |")
    recovered = lookup(r, "small_data_recovered", "small_soft")
    if recovered:
        cells = [_share_cell(lookup(recovered, metric, split)) for metric, split in
                 (("frames", "dev"), ("frames", "test"), ("wer", "test"))]
        lines.append("| share of the 3% model's gap to the full-data baseline closed by the soft targets | "
                     + " | ".join(cells) + f" | {PAPER_SMALL_GAP.removeprefix('paper: ')} |")
    return lines


def body(r: dict) -> list[str]:
    b = r["bootstrap"]
    intro = [f"Intervals: paired bootstrap over utterances ({b['num_samples']} replicates, seed {b['seed']}), "
             "percentile 95% intervals; the same resampled utterances for every system of a comparison.", ""]
    return (intro + at_a_glance(r) + [""] + _table1_md(r) + ["", "![table 1](table1.png)", ""]
            + _share_md("## Share of the ensemble's frame-accuracy (and WER) gain kept by the distilled model",
                        r["gain_kept"], f"paper: more than {percent(PAPER_SHARE_KEPT)}")
            + _paper_claim_md(r["gain_kept"]) + _ensemble_size_md(r) + _fidelity_md(r) + [""] + _transfer_md(r)
            + [""]
            + _claims_md(r) + [""] + _small_md(r) + [""] + _students_md(r) + [""] + _cost_md(r) + [""]
            + _convergence_md(r) + [""] + _setup_md(r) + [""] + _details_md(r))


def history_md(history: list[dict]) -> list[str]:
    if len(history) < 2:
        return []
    keys = list(history[0]["headline"])
    lines = ["## History (newest first)", "",
             "| date | commit | machine | stages s | wall s | " + " | ".join(keys) + " | command |",
             "|---" * (len(keys) + 6) + "|"]
    for h in history:
        lines.append(f"| {h['date']} | {h['git_commit']} | {h['machine']} | {h['total_seconds']:.0f} | "
                     f"{fmt(h.get('wall_seconds'), 0)} | "
                     + " | ".join(fmt(h["headline"].get(k), 3 if k.startswith(("kept", "recov")) else 1)
                                  for k in keys) + f" | `{h['command']}` |")
    return lines


def whole_run_line(meta: dict) -> str:
    """The header's whole-run line: minutes and seconds, or why it is unknown."""
    wall = meta.get("wall_seconds")
    if wall is None:
        return f"unknown ({NO_WHOLE_RUN})"
    return f"{wall:.0f} s ({int(wall) // 60} min {int(wall) % 60} s)"

"""Every derived number of a report's results.json, recomputed from the numbers it derives from.

A reader cites the shares of the ensemble's gain, the 3% recovery, the chosen temperature, the members a distilled
model is worth and the costs; each is recomputed here from Table 1's estimates, the stage summaries the report
copies, the sweep, the ensemble-size curve and the tree, never by calling the report's own code, so that a wrong
formula or choice in the report (a mean of per-utterance ratios instead of a ratio of sums, test choosing the
temperature, a swapped row) shows up as a disagreement. It lives with the tests rather than in the report package
for that reason: it shares no code with what it checks, and both of its callers are tests (the committed results of
every config, and the CI run's own report).

Sections a report of today always has are required; newer ones (``ensemble_size``, ``fidelity``, ``run_seconds``,
extra students) are checked where present, so an older committed file is checked on everything it holds.

Tolerances: :data:`EXACT` where both sides come from the same integer counts (a share against Table 1's unrounded
estimates, a difference of two rates); :data:`ROUNDED` where a stage summary keeps two decimals of a percentage.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

EXACT = 1e-9
"""Agreement of two computations from the same counts (float rounding only)."""
ROUNDED = 0.005 + EXACT
"""Agreement with a percentage a stage summary rounded to two decimals."""
REQUIRED = ("table1", "gain_kept", "comparisons", "small_data_table", "small_data", "small_data_recovered",
            "ensemble_members", "temperature_sweep", "best_temperature", "cost", "tree", "stage_seconds", "meta")
MAIN = ("baseline", "ensemble", "distilled")
UNLABELED_STUDENT = "distilled_unlabeled"
"""The student distilled on train + untranscribed audio: its row is ``unlabeled.row``, beside Table 1's."""
GROUPS = ("dev", "test", "test seen", "test unseen")
METRIC_KEY = {"frames": "frame_acc", "wer": "wer"}
CLAIM_METRIC = {"frame accuracy": "frames", "WER": "wer"}
SMALL_TABLE = {"frames": {"dev": "dev", "test": "test"}, "wer": {"test": "test_wer"}}
"""Which (metric, group) of the 3% experiment its table holds, and under which key."""


@dataclass
class Consistency:
    """The problems found (one sentence each) and how many comparisons were made."""

    problems: list[str] = field(default_factory=list)
    checked: int = 0

    def close(self, what: str, got: float | None, want: float | None, tol: float = EXACT) -> None:
        self.checked += 1
        if got is None or want is None or abs(got - want) > tol:
            self.problems.append(f"{what}: {got} != {want} (tolerance {tol:g})")

    def equal(self, what: str, got: Any, want: Any) -> None:
        self.checked += 1
        if got != want:
            self.problems.append(f"{what}: {got!r} != {want!r}")

    def true(self, what: str, holds: bool) -> None:
        self.checked += 1
        if not holds:
            self.problems.append(what)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _key(metric: str, group: str) -> str:
    """Table 1's cell of a comparison group: ``test seen`` + frames -> ``test_seen_frame_acc``."""
    return f"{group.replace(' ', '_')}_{METRIC_KEY[metric]}"


def _t1(r: dict, system: str, metric: str, group: str) -> float | None:
    if system == UNLABELED_STUDENT:
        return _get(r, "unlabeled", "row", _key(metric, group), "estimate")
    return _get(r["table1"], system, _key(metric, group), "estimate")


def _share(candidate: float, base: float, better: float) -> float:
    """The share of better's gain over base that the candidate keeps: a ratio of the rates' differences, which is
    the ratio of summed counts (the shared denominator cancels), not a mean of per-utterance shares."""
    return (candidate - base) / (better - base)


def _interval(c: Consistency, what: str, iv: dict | None, holds_estimate: bool = True) -> None:
    if iv is None:
        return
    c.true(f"{what}: interval [{iv['low']}, {iv['high']}] is reversed", iv["low"] <= iv["high"])
    if holds_estimate:
        c.true(f"{what}: estimate {iv['estimate']} outside [{iv['low']}, {iv['high']}]",
               iv["low"] <= iv["estimate"] <= iv["high"])


def _significant(c: Consistency, what: str, row: dict, diff: dict) -> None:
    c.equal(f"{what}: significant (the interval excludes 0)", row["significant"],
            not diff["low"] <= 0.0 <= diff["high"])


def _table1(c: Consistency, r: dict) -> None:
    c.equal("Table 1 systems", list(r["table1"]), list(MAIN))
    for system, row in r["table1"].items():
        for key, cell in row.items():
            _interval(c, f"table1 {system} {key}", cell)


def _gain_kept(c: Consistency, r: dict) -> None:
    """The distilled model's share of the ensemble's gain, per metric and group, from Table 1's estimates."""
    for metric, groups in r["gain_kept"].items():
        for group, row in groups.items():
            what = f"gain_kept {metric} {group}"
            c.equal(f"{what} systems", (row["base"], row["better"], row["candidate"]), MAIN)
            base, better, cand = (_t1(r, s, metric, group) for s in MAIN)
            if row["share"] is None:
                c.equal(f"{what}: undefined only without a gain", better - base, 0.0)
                continue
            c.close(what, row["share"]["estimate"], _share(cand, base, better))
            _interval(c, what, row["share"], holds_estimate=False)


def _small_row(r: dict, system: str) -> dict | None:
    """The 3% table's row of a system named in a comparison (the full-data baseline is ``baseline_full``)."""
    return r["small_data_table"].get("baseline_full" if system == "baseline" else system)


def _small_data(c: Consistency, r: dict) -> None:
    """The 3% table against the stage summary, the full-data baseline against Table 1, the soft model's temperature
    against its dev column, and the recovery against the table's estimates."""
    table, systems = r["small_data_table"], r["small_data"]["systems"]
    for metric, groups in SMALL_TABLE.items():
        for group, col in groups.items():
            c.close(f"3% table baseline_full {col} vs Table 1", _get(table, "baseline_full", col, "estimate"),
                    _t1(r, "baseline", metric, group))
    for key, row in table.items():
        if key not in systems:  # the 3% model with the untranscribed pool: stage transfer's, checked by its claims
            continue
        c.equal(f"3% table {key} train vs the small_data summary", row["train"], systems[key]["train"])
        for split in ("dev", "test"):
            if split in systems[key]:
                c.close(f"3% table {key} {split} vs the small_data summary", _get(row, split, "estimate"),
                        systems[key][split], ROUNDED)
        by_t = systems[key].get("dev_by_temperature")
        if by_t is None:
            continue
        dev = {float(t): acc for t, acc in by_t.items()}
        chosen = min(t for t, acc in dev.items() if acc == max(dev.values()))
        c.equal(f"3% {key} temperature: the dev arg-max (lowest of equal ones)", systems[key]["temperature"], chosen)
        c.equal(f"3% table {key} temperature", row["temperature"], chosen)
        c.equal(f"3% {key} dev accuracy is the chosen temperature's", systems[key]["dev"], by_t[f"{chosen:g}"])
    c.equal("3% summary temperature is small_soft's", r["small_data"]["temperature"],
            systems["small_soft"]["temperature"])
    for soft, shares in r["small_data_recovered"].items():
        for metric, groups in SMALL_TABLE.items():
            for group, col in groups.items():
                row = _get(shares, metric, group)
                if row is None:
                    continue
                what = f"3% recovery {soft} {metric} {group}"
                c.equal(f"{what} systems", (row["base"], row["better"], row["candidate"]),
                        ("small_hard", "baseline", soft))
                hard, full, cand = (_get(_small_row(r, s), col, "estimate") for s in ("small_hard", "baseline", soft))
                c.close(what, _get(row, "share", "estimate"), _share(cand, hard, full))
                _interval(c, what, row["share"], holds_estimate=False)


def _claims(c: Consistency, r: dict) -> None:
    """Each claim's difference from the two systems' estimates (Table 1, or the 3% table), its significance from
    its interval; and the 3% recovery of every group from the two claims that bound it."""
    diffs: dict[tuple[str, str, str], float] = {}
    for row in r["comparisons"]:
        metric, group, a, b = CLAIM_METRIC[row["metric"]], row["group"], row["a"], row["b"]
        what = f"claim {row['claim']} {row['metric']} {group}"
        diffs[(row["claim"], metric, group)] = row["diff"]["estimate"]
        _significant(c, what, row, row["diff"])
        c.true(f"{what}: P(B better) {row['prob_b_better']} is not a probability", 0.0 <= row["prob_b_better"] <= 1.0)
        if {a, b} <= {*MAIN, UNLABELED_STUDENT}:
            c.close(what, row["diff"]["estimate"], _t1(r, b, metric, group) - _t1(r, a, metric, group))
            continue
        col = SMALL_TABLE[metric].get(group)
        if col is not None:
            c.close(what, row["diff"]["estimate"],
                    _get(_small_row(r, b), col, "estimate") - _get(_small_row(r, a), col, "estimate"))
    recovered = _get(r, "small_data_recovered", "small_soft") or {}
    for (claim, metric, group), soft_vs_hard in diffs.items():
        soft_vs_full = diffs.get(("3% soft vs full baseline", metric, group))
        row = _get(recovered, metric, group)
        if claim != "3% soft vs 3% hard" or soft_vs_full is None or row is None or row["share"] is None:
            continue
        c.close(f"3% recovery small_soft {metric} {group} from the claims", row["share"]["estimate"],
                soft_vs_hard / (soft_vs_hard - soft_vs_full))


def _temperature(c: Consistency, r: dict) -> None:
    """The chosen temperature is the sweep's dev arg-max (the lowest of equal ones), and Table 1's distilled row is
    that student's sweep row."""
    sweep = {float(t): row for t, row in r["temperature_sweep"].items()}
    dev = {t: row["dev"]["all"] for t, row in sweep.items()}
    chosen = min(t for t, acc in dev.items() if acc == max(dev.values()))
    c.equal("best_temperature: the sweep's dev arg-max (lowest of equal ones)", r["best_temperature"], chosen)
    for split, subsets in (("dev", ("all",)), ("test", ("all", "seen", "unseen"))):
        for subset in subsets:
            if subset in sweep[chosen][split]:
                group = split if subset == "all" else f"{split} {subset}"
                c.close(f"Table 1 distilled {group} vs the sweep at T={chosen:g}", _t1(r, "distilled", "frames", group),
                        sweep[chosen][split][subset], ROUNDED)


def _ensemble(c: Consistency, r: dict) -> None:
    """The members' summary statistics, the ensemble-size curve's ends, and the members a distilled model is worth."""
    for split, m in r["ensemble_members"].items():
        accs = m["members"]
        c.close(f"ensemble members {split} mean", m["member_mean"], statistics.fmean(accs))
        c.close(f"ensemble members {split} sd", m["member_std"], statistics.stdev(accs) if len(accs) > 1 else 0.0)
        c.close(f"ensemble {split} vs Table 1", m["ensemble"], _t1(r, "ensemble", "frames", split))
        if "by_size" in m:
            c.equal(f"ensemble-size curve {split} length", len(m["by_size"]), len(accs))
            c.close(f"ensemble-size curve {split}: one member is the first member", m["by_size"][0], accs[0])
            c.close(f"ensemble-size curve {split}: all members are the ensemble", m["by_size"][-1], m["ensemble"])
    for split, v in (r.get("ensemble_size") or {}).items():
        c.equal(f"ensemble_size {split} curve", v["by_size"], r["ensemble_members"][split]["by_size"])
        c.close(f"ensemble_size {split} distilled vs Table 1", v["distilled"], _t1(r, "distilled", "frames", split))
        matched = [n for n in range(1, len(v["by_size"]) + 1) if v["by_size"][n - 1] <= v["distilled"]]
        c.equal(f"ensemble_size {split}: members the distilled model is worth", v["distilled_worth"],
                max(matched, default=0))


def _fidelity(c: Consistency, r: dict) -> None:
    for split, row in (r.get("fidelity") or {}).items():
        c.close(f"fidelity {split}: distilled - baseline", row["diff"]["estimate"],
                row["distilled"]["estimate"] - row["baseline"]["estimate"])
        for name in ("baseline", "distilled", UNLABELED_STUDENT):
            _interval(c, f"fidelity {split} {name}", row.get(name))


def _unlabeled(c: Consistency, r: dict) -> None:
    """The untranscribed-pool student's share of the ensemble's gain from its row and Table 1's; each curve student's
    dev and test share from its own estimates; the transfer set's size from its frames."""
    u = r.get("unlabeled")
    if not u:
        return
    pool = u["pool"]
    c.close("unlabeled pool size", pool["size"],
            round((pool["labeled_frames"] + pool["unlabeled_frames"]) / pool["labeled_frames"], 3))
    for key, cell in u["row"].items():
        _interval(c, f"unlabeled row {key}", cell)
    for metric, groups in u["gain_kept"].items():
        for group, row in groups.items():
            what = f"unlabeled gain_kept {metric} {group}"
            c.equal(f"{what} systems", (row["base"], row["better"], row["candidate"]),
                    ("baseline", "ensemble", UNLABELED_STUDENT))
            base, better, cand = (_t1(r, s, metric, group) for s in ("baseline", "ensemble", UNLABELED_STUDENT))
            if row["share"] is None:
                c.equal(f"{what}: undefined only without a gain", better - base, 0.0)
                continue
            c.close(what, row["share"]["estimate"], _share(cand, base, better))
            _interval(c, what, row["share"], holds_estimate=False)
    for name, point in (u.get("curve") or {}).items():
        for split in ("dev", "test"):
            share = point["kept"].get(split)
            if share:
                base, better = (_t1(r, s, "frames", split) for s in ("baseline", "ensemble"))
                c.close(f"curve {name} {split} share", share["estimate"],
                        _share(point[f"{split}_frame_acc"]["estimate"], base, better))


def _dnn_biases(hidden_layers: int, hidden_dim: int, num_classes: int) -> int:
    """Parameters a DNN has beyond its multiply-accumulates per frame: one bias per unit."""
    return hidden_layers * hidden_dim + num_classes


def _students(c: Consistency, r: dict) -> None:
    """Each student's share of the ensemble's gain from its and Table 1's test estimates; each distillation gain from
    the two students' estimates; each student's parameters and MACs against its shape."""
    students = r.get("students") or {}
    classes = r["tree"]["num_pdfs"]
    for name, st in students.items():
        for metric, key in METRIC_KEY.items():
            kept, base, better = st.get(f"kept_{key}"), _t1(r, "baseline", metric, "test"), \
                _t1(r, "ensemble", metric, "test")
            if st.get(f"test_{key}") is None:
                continue
            if kept is None:
                c.equal(f"student {name} share of the test {metric} gain: undefined only without a gain",
                        better - base, 0.0)
                continue
            c.close(f"student {name} share of the ensemble's test {metric} gain", kept["estimate"],
                    _share(st[f"test_{key}"]["estimate"], base, better))
        cost = r["cost"].get(name)
        if cost is not None:
            c.equal(f"student {name} parameters: report vs cost", cost["params"], st["params"])
            c.equal(f"student {name} MACs per frame: parameters less biases", cost["macs_per_frame"],
                    st["params"] - _dnn_biases(st["hidden_layers"], st["hidden_dim"], classes))
    for g in r.get("distillation_gain") or []:
        hard, soft = students[g["hard"]], students[g["distilled"]]
        c.equal(f"distillation gain {g['distilled']} targets", (hard["targets"], soft["targets"]), ("hard", "soft"))
        c.equal(f"distillation gain {g['distilled']} shape", g["shape"],
                f"{hard['hidden_layers']}x{hard['hidden_dim']}")
        for metric, key in METRIC_KEY.items():
            if g.get(key) is None:
                continue
            c.close(f"distillation gain {g['distilled']} - {g['hard']} {metric}", g[key]["estimate"],
                    soft[f"test_{key}"]["estimate"] - hard[f"test_{key}"]["estimate"])
            _significant(c, f"distillation gain {g['distilled']} {metric}", g[key], g[key])


def _cost(c: Consistency, r: dict) -> None:
    """The GMM's parameters and MACs against its Gaussians, the ensemble's against its members', every single model of
    the member shape against the baseline's, and each decoding RTF against the decode stage's."""
    cost, gauss = r["cost"], r["tree"]["num_gauss"]
    if "gmm" in cost:
        dim = cost["gmm"]["macs_per_frame"] // (2 * gauss)
        c.equal("gmm MACs per frame: 2 x dim per Gaussian", cost["gmm"]["macs_per_frame"], 2 * gauss * dim)
        c.equal("gmm parameters: a weight, a mean and a variance vector per Gaussian", cost["gmm"]["params"],
                gauss * (2 * dim + 1))
    members = len(r["ensemble_members"]["dev"]["members"])
    base = cost["baseline"]
    for field_ in ("params", "macs_per_frame"):
        c.equal(f"ensemble {field_}: {members} members'", cost["ensemble"][field_], members * base[field_])
        for name in ("distilled", "small_hard", "small_soft", "small_soft_baseline"):
            if name in cost:
                c.equal(f"{name} {field_}: the member shape's", cost[name][field_], base[field_])
    for name, row in cost.items():
        c.true(f"cost {name}: MACs per frame above parameters", 0 < row["macs_per_frame"] < row["params"])
        rtf = _get(r, "decoding", name, "rtf")
        if rtf is not None:
            c.equal(f"cost {name} decoding RTF vs the decode stage", row["decode_rtf"], rtf)


def _times(c: Consistency, r: dict) -> None:
    total = sum(r["stage_seconds"].values())
    c.close("meta total_seconds: the stages' sum", r["meta"]["total_seconds"], round(total, 1), 0.05 + EXACT)
    run = r.get("run_seconds")
    if run:
        c.close("run_seconds stages: the stages' sum", run["stages"], round(total, 1), 0.05 + EXACT)
        c.close("run_seconds wall: install + stages + the rest", run["wall"], run["install"] + run["stages"]
                + run["other"], 0.15)
    if "wall_seconds" in r["meta"]:
        c.equal("meta wall_seconds", r["meta"]["wall_seconds"], _get(run, "wall"))


def _headline(c: Consistency, r: dict, history: list[dict]) -> None:
    """The newest history row is this run, and its headline numbers are the tables'."""
    row = history[0]
    c.equal("history's newest row is this run", row["run"], r["meta"]["run"])
    c.equal("history total_seconds", row["total_seconds"], r["meta"]["total_seconds"])
    for system in MAIN:
        for key, metric, group in (("dev_frame_acc", "frames", "dev"), ("test_wer", "wer", "test")):
            c.equal(f"history headline {system}_{key}", row["headline"][f"{system}_{key}"],
                    _t1(r, system, metric, group))
    for name, shares in (("kept", r["gain_kept"]), ("recovered", _get(r, "small_data_recovered", "small_soft"))):
        for group in ("dev", "test"):
            c.equal(f"history headline {name}_frames_{group}", row["headline"][f"{name}_frames_{group}"],
                    _get(shares, "frames", group, "share", "estimate"))


def check(results: dict, history: list[dict] | None = None) -> Consistency:
    """Recompute every derived number of ``results`` (a results.json or report.json) and, with ``history`` (its
    history.json), the newest history row; a missing required section is a problem of its own."""
    c = Consistency()
    missing = [k for k in REQUIRED if results.get(k) is None]
    if missing:
        c.problems.append(f"sections missing: {', '.join(missing)}")
        return c
    for part in (_table1, _gain_kept, _small_data, _claims, _temperature, _ensemble, _fidelity, _unlabeled, _students,
                 _cost, _times):
        part(c, results)
    if history is not None:
        _headline(c, results, history)
    return c

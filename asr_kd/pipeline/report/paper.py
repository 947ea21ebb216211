"""The paper's own numbers (Hinton, Vinyals & Dean 2015, section 4 and section 6), which every report sets beside
its measurements. They live here alone."""
from __future__ import annotations

PAPER_TABLE1 = {"baseline": (58.9, 10.9), "ensemble": (61.1, 10.7), "distilled": (60.8, 10.7)}
"""Table 1: test frame accuracy (%) and WER (%) of the baseline, the 10x ensemble and the distilled model."""

PAPER_SMALL = {"baseline_full": (63.4, 58.9), "small_hard": (67.3, 44.5), "small_soft": (65.4, 57.0)}
"""Table 3 (section 6): train and test frame accuracy (%) of the full-data baseline and the 3% models."""

PAPER_SHARE_KEPT = 0.8
"""The distilled model keeps "more than 80%" of the ensemble's frame-accuracy gain over the baseline."""

PAPER_SMALL_GAP = "paper: 12.5 of 14.4 points (87%)"
"""The 3% soft-target model closes 12.5 of the 14.4-point test frame-accuracy gap between the 3% hard-target model
and the full-data baseline (the column heading the report gives it)."""

"""The headline output: the paper's tables with confidence intervals, and which differences are real.

Numbers come from what the stages wrote, never from here: accuracies and WERs are recomputed from the per-frame
predictions (``exp/eval/<system>/<split>/pred.scp``) and hypotheses (``exp/decode/<system>/<split>/hyp.txt``)
with :mod:`asr_kd.evaluation.compare` (the same functions as ``asr-kd-compare``), which adds a paired-bootstrap 95%
interval over utterances to every number and every difference; everything else (member spread, the 3% train
accuracies, convergence, set-up, times) is read from the stages' ``summary.json`` and the models' metrics.json.

The package follows the report's own flow:

- :mod:`.statistics`: which systems are compared and how (the paired-bootstrap comparisons, shares of a gain);
- :mod:`.collect`: everything the report shows, gathered into one JSON-able dict;
- :mod:`.markdown` and :mod:`.charts`: that dict as Markdown sections and as pictures;
- :mod:`.paper`: the paper's own numbers, set beside ours;
- :mod:`.publish`: ``exp/report/`` and the config's results dir.

The same Markdown body goes to ``exp/report/report.md`` and, with the command/machine/date header Kaldi's RESULTS
files carry, to ``RESULTS.md`` in the results dir of the run's config (``recipes/<recipe>/results/<config>/`` for
a recipe run in place, ``<work_dir>/results/`` otherwise), so one config's results never overwrite another's.
Every publication is also added to ``history.json`` there, and RESULTS.md lists the runs newest first.
"""
from asr_kd.pipeline.report.publish import write_report

__all__ = ["write_report"]

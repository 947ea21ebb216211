"""The command line's contract for bad input: one clear line naming the file and line, exit status 2, nothing
already prepared lost; the traceback only with debug=true (and always in the stage's log). A stage started before
the stage that makes what it reads says so the same way, before it writes anything."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent


def _kaldi_dirs(root: Path, bad_text: bool) -> Path:
    """train/dev/test data dirs of two utterances each; with ``bad_text`` the dev transcript of line 2 is empty."""
    for split in ("train", "dev", "test"):
        d = root / split
        d.mkdir(parents=True)
        utts = [f"spk1-{split}{i}" for i in range(2)]
        for u in utts:
            sf.write(d / f"{u}.wav", np.zeros(1600, dtype=np.float32), 16000, subtype="PCM_16")
        (d / "wav.scp").write_text("".join(f"{u} {d / u}.wav\n" for u in utts))
        (d / "utt2spk").write_text("".join(f"{u} spk1\n" for u in utts))
        texts = ["HELLO WORLD", "" if bad_text and split == "dev" else "GOOD MORNING"]
        (d / "text").write_text("".join(f"{u} {t}".rstrip() + "\n" for u, t in zip(utts, texts)))
    return root


def _cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "asr_kd.cli", "--config-dir", str(REPO / "recipes" / "kaldi" / "conf"),
           "--config-name", "default", f"work_dir={work}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=dict(os.environ, KALDI_ROOT="/tmp"))


def test_bad_data_dir_ends_in_one_line_and_exit_2(tmp_path: Path) -> None:
    src = _kaldi_dirs(tmp_path / "src", bad_text=True)
    work = tmp_path / "work"
    work.mkdir()
    result = _cli(work, "stage=corpus", f"corpus.source_dir={src}")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {src / 'dev' / 'text'}:2:") and "empty" in last, result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert "Traceback" in (work / "exp" / "stages" / "corpus" / "log.txt").read_text()  # kept in the stage log
    assert not (work / "data" / "train").exists()  # validated before anything was imported

    debug = _cli(work, "stage=corpus", f"corpus.source_dir={src}", "debug=true")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_good_import_is_kept_when_a_later_run_fails(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    good = _kaldi_dirs(tmp_path / "good", bad_text=False)
    assert _cli(work, "stage=corpus", f"corpus.source_dir={good}").returncode == 0
    text = (work / "data" / "dev" / "text").read_text()
    bad = _kaldi_dirs(tmp_path / "bad", bad_text=True)
    failed = _cli(work, "stage=corpus", "force=true", f"corpus.source_dir={bad}")
    assert failed.returncode == 2
    assert (work / "data" / "dev" / "text").read_text() == text  # nothing already computed is lost


def test_ranks_start_only_for_at_least_two_shares(tmp_path: Path, monkeypatch) -> None:
    """A rank-parallel stage relaunches under torchrun only when its config gives it two or more jobs: the
    default config's empty students stage (and a one-member ensemble) runs in this process, no ranks started."""
    from omegaconf import OmegaConf

    import asr_kd.cli as cli
    from asr_kd.pipeline.stages import RANK_PARALLEL

    import signal

    from torch.distributed.elastic.multiprocessing.api import _terminate_process_handler

    launched = []
    omp_before = os.environ.get("OMP_NUM_THREADS")
    handlers_before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def torchrun(argv):  # what the real agent does to this process's signals, besides starting the ranks
        launched.append((argv, pickle.loads(Path(os.environ[cli.RANK_CONFIG_ENV]).read_bytes())))
        for sig in handlers_before:
            signal.signal(sig, _terminate_process_handler)

    monkeypatch.setattr("torch.distributed.run.main", torchrun)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = OmegaConf.create({"procs": 2, "stage": "students,decode", "students": {}, "work_dir": str(tmp_path),
                            "force": False, "ensemble": {"num_members": 1}, "distill": {"temperatures_sweep": [2.0]}})
    for stage in ("students", "ensemble", "distill"):
        assert RANK_PARALLEL[stage](cfg) < 2 and not cli._spread_over_ranks(cfg, stage, [])
    assert not launched
    cfg.students = {"a": {}, "b": {}}
    assert cli._spread_over_ranks(cfg, "students", []) and len(launched) == 1  # two students: two ranks
    # the ranks run that one stage of this process's config (not one composed again from the conf files, which
    # may have changed since this run began), whatever list this process was given
    argv, rank_cfg = launched[0]
    assert argv[-2:] == ["-m", "asr_kd.cli"] and "--nproc-per-node=2" in argv
    assert rank_cfg.stage == "students" and cfg.stage == "students,decode"
    assert OmegaConf.to_container(rank_cfg.students) == {"a": {}, "b": {}} and rank_cfg.procs == 2
    assert cli.RANK_CONFIG_ENV not in os.environ  # the config file is gone with the ranks
    assert os.environ.get("OMP_NUM_THREADS") == omp_before  # set for the ranks only, not for later stages here
    # and workers forked by later stages die on Pool.terminate()'s SIGTERM instead of raising inside a task
    assert {sig: signal.getsignal(sig) for sig in handlers_before} == handlers_before


def test_stage_lists_run_in_order_and_unknown_names_fail_before_any_runs(tmp_path: Path) -> None:
    import asr_kd.cli as cli
    from asr_kd.pipeline.stages import STAGES

    assert cli.stage_names("all") == list(STAGES)
    assert cli.stage_names("lang, mono,tri") == ["lang", "mono", "tri"]
    src = _kaldi_dirs(tmp_path / "src", bad_text=False)
    work = tmp_path / "work"
    work.mkdir()
    result = _cli(work, "stage='corpus,bogus'", f"corpus.source_dir={src}")
    assert result.returncode == 2 and "unknown stage bogus" in result.stderr.strip().splitlines()[-1]
    assert not (work / "data" / "train").exists()  # corpus did not run either
    assert _cli(work, "stage='corpus,features'", f"corpus.source_dir={src}").returncode == 0
    assert (work / "exp" / "stages" / "corpus" / ".done").exists()
    assert (work / "exp" / "stages" / "features" / ".done").exists()


def test_a_stage_started_too_early_names_the_missing_file_and_the_stage_that_makes_it(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = _cli(work, "stage=baseline")
    assert result.returncode == 2, result.stderr
    # the earliest stage missing (features, before tri's alignments): the one to run first
    assert result.stderr.strip().splitlines() == [
        f"error: stage baseline needs {work / 'data' / 'fbank' / 'train' / 'feats.scp'}, which stage 1 (features) "
        "makes: run it first (run.sh --stage 1)"], result.stderr
    assert sorted(p.name for p in (work / "exp").iterdir()) == ["hydra"]  # no stage dir, log, numerics or model

    debug = _cli(work, "stage=baseline", "debug=true")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "InputError" in debug.stderr


def test_a_need_made_by_an_earlier_stage_of_the_same_run_does_not_stop_it(tmp_path: Path) -> None:
    src = _kaldi_dirs(tmp_path / "src", bad_text=False)
    work = tmp_path / "work"
    work.mkdir()
    alone = _cli(work, "stage=features")
    assert alone.returncode == 2 and alone.stderr.strip().splitlines() == [
        f"error: stage features needs {work / 'data' / 'train' / 'wav.scp'}, which stage 0 (corpus) makes: run it "
        "first (run.sh --stage 0)"], alone.stderr
    together = _cli(work, "stage='corpus,features'", f"corpus.source_dir={src}")
    assert together.returncode == 0, together.stderr
    assert (work / "exp" / "stages" / "features" / ".done").exists()


def test_a_stage_for_ranks_started_too_early_says_so_in_one_line_before_starting_them(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = _cli(work, "stage=ensemble", "procs=2", "ensemble.num_members=2")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: stage ensemble needs {work / 'data' / 'fbank' / 'train' / 'feats.scp'}, which stage 1 (features) "
        "makes: run it first (run.sh --stage 1)"], result.stderr
    assert "torchrun" not in result.stdout + result.stderr  # no ranks were started to fail one by one

"""The documentation a newcomer reads: short, linked, in step with the committed results, and free of the team's
history (issue numbers, commit-hash narratives, dated incidents) that a user cannot look up."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from asr_kd.pipeline.report.markdown import at_a_glance

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
TINY_RESULTS = REPO / "recipes" / "synth" / "results" / "tiny" / "results.json"


def test_readme_is_short_and_its_first_screen_says_what_a_newcomer_needs() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines: move the rest to docs/"
    first = "\n".join(lines[:40])
    for needed in ("bash recipes/synth/run.sh", "bash tests/run.sh", "## What it needs", "Python 3.11",
                   "sudo", "GB", "recipes/synth/results/tiny/"):
        assert needed in first, f"the README's first 40 lines lack {needed!r}"


def test_readme_results_table_is_the_committed_runs() -> None:
    """The README's results table is the committed tiny run's "at a glance" table, as the report renders it: a
    regenerated RESULTS.md without the README following it (or a hand-edited number) fails here."""
    table = at_a_glance(json.loads(TINY_RESULTS.read_text()))[2:]  # the table, without its heading
    text = README.read_text()
    assert "\n".join(table) in text, "README's results table differs from results/tiny/results.json:\n" + \
        "\n".join(table)
    assert "\n".join(table) in (TINY_RESULTS.parent / "RESULTS.md").read_text()


def _relative_links(path: Path) -> list[str]:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    return [link for link in links if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("page", [README, REPO / "ARCHITECTURE.md", *DOCS], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = [link for link in _relative_links(page) if not (page.parent / link).exists()]
    assert not broken, f"{page.name}: broken links {broken}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / link).resolve() for link in _relative_links(README)}
    assert DOCS and not [p.name for p in DOCS if p.resolve() not in linked]


PROCESS_WORDS = re.compile(
    r"\(issue #?\d+\)|\bissue #?\d+\b|\bmain job\b"
    r"|\b(?:fixed|made|since|from|predates?|at|before|after|in) [0-9a-f]{7}\b"
    r"|\b20\d\d-[01]\d-[0-3]\d\b",
    flags=re.IGNORECASE)


def _user_facing_files() -> list[str]:
    """Code, configs, scripts and docs (tests and generated results aside: a test may hold a date as data)."""
    tracked = subprocess.run(["git", "ls-files", "--", "*.py", "*.md", "*.yaml", "*.sh", "*.toml"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    return [f for f in tracked if not f.startswith("tests/") and "/results/" not in f]


def test_code_configs_and_docs_speak_to_users() -> None:
    hits = [f"{name}:{n}: {line.strip()}" for name in _user_facing_files()
            for n, line in enumerate((REPO / name).read_text().splitlines(), 1) if PROCESS_WORDS.search(line)]
    assert not hits, "the team's history in user-facing files:\n" + "\n".join(hits)


def test_the_process_word_check_can_fail() -> None:
    for line in ("the curve (issue 10)", "as the main job does", "fixed in 76b50e9", "seen on 2026-12-02"):
        assert PROCESS_WORDS.search(line), line
    for line in ("an utterance id issues no warning", "hash 0123456789abcdef", "sha256 of every file"):
        assert not PROCESS_WORDS.search(line), line

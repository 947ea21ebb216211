"""Real English text from Debian packages: sentence splitting and cleaning, the sources, held-out exclusion."""
from __future__ import annotations

from asr_kd.corpus import text_sources as ts


def test_split_sentences_keeps_titles_and_initials() -> None:
    text = 'Mr. Weston do not trifle with me.--Consider it. "Yes!" said he. J. Smith went. It is so.'
    assert ts.split_sentences(text) == ["Mr. Weston do not trifle with me.", "Consider it.", '"Yes!" said he.',
                                        "J. Smith went.", "It is so."]


def test_clean_for_speech_drops_unspoken_marks() -> None:
    assert ts.clean_for_speech("\u201cI'm _here_,\u201d said he (quietly) [Obs.] & left.") == \
        "I'm here, said he quietly and left."
    assert ts.clean_for_speech("'Tis the dogs' fault.") == "Tis the dogs fault."


def test_recase_emphasis_lowers_capitalized_words_but_not_i() -> None:
    assert ts.recase_emphasis("for THEM I said NO") == "for them I said no"


def test_every_source_reads_and_normalizes_deterministically() -> None:
    for name in ts.SOURCES:
        sentences = ts.load_source(name)
        assert len(sentences) > 500, name
        assert all(4 <= len(s.words) <= 30 for s in sentences)
        assert len({s.transcript for s in sentences}) == len(sentences)  # unique by transcript
    harvard = ts.load_source("harvard")
    assert harvard[0].spoken == "The birch canoe slid on the smooth planks."
    assert ts.load_source("austen")[0].transcript == "THE FAMILY OF DASHWOOD HAD LONG BEEN SETTLED IN SUSSEX"
    pool = ts.spoken_pool(("harvard", "austen"))
    assert [s.transcript for s in pool] == sorted(s.transcript for s in pool)
    assert ts.spoken_pool(("austen", "harvard")) == pool  # the order the sources are listed in does not matter


def test_lm_sentences_leave_out_held_out_sentences_and_what_contains_them() -> None:
    harvard = ts.load_source("harvard")
    held = [harvard[0].words, harvard[1].words]
    lm = ts.lm_sentences(["harvard", "wordnet"], held)
    transcripts = {s.transcript for s in lm}
    assert harvard[0].transcript not in transcripts and harvard[1].transcript not in transcripts
    assert harvard[2].transcript in transcripts
    index = {("THE", "CAT"): [("THE", "CAT", "SAT", "DOWN")]}
    assert ts._contains_any(("SO", "THE", "CAT", "SAT", "DOWN", "AGAIN"), index)  # embedded in a longer one
    assert not ts._contains_any(("THE", "CAT", "SAT", "UP"), index)

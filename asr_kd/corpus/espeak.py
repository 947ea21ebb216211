"""espeak-ng through its C API (ctypes), run in a fresh process per batch so that its output is reproducible.

Why ctypes: only the API reports what was said and when (a word event and a phoneme event, with the sample
offset, for everything spoken); the command-line tool gives audio only.

Why a child process: libespeak-ng keeps global state between calls (its noise generator is libc ``rand()``,
and the synthesizer's filters and voice settings carry over from one utterance to the next), so the same
sentence comes out differently depending on what the process said before. A fresh process per batch makes the
audio a function of (voice, batch) only, which the corpus determinism guarantee needs. The child imports
nothing but the standard library, so it starts in a few tens of milliseconds.

Protocol: the parent writes one JSON request on stdin ``{"voice", "rate", "pitch", "texts"}``; the child
answers, per text, one JSON header line ``{"sample_rate", "samples", "events"}`` followed by ``samples``
little-endian int16 values.
"""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from dataclasses import dataclass

EV_END, EV_WORD, EV_PHONEME = 0, 1, 7
_AUDIO_OUTPUT_SYNCHRONOUS, _INIT_PHONEME_EVENTS, _CHARS_UTF8, _POS_CHARACTER = 2, 1, 1, 1
_PARAM_RATE, _PARAM_PITCH = 1, 3


class _Event(ctypes.Structure):
    """``espeak_EVENT`` from speak_lib.h."""

    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class EspeakOutput:
    """One utterance: int16 samples at ``sample_rate`` and the events as (type, text_position, sample, name).

    ``text_position`` is the 1-based character offset of the word an event belongs to; ``name`` is the
    phoneme mnemonic for phoneme events and empty otherwise.
    """

    sample_rate: int
    pcm: bytes
    events: list[tuple[int, int, int, str]]


def _serve(request: dict) -> None:
    """Child side: synthesize every text and stream the answers to stdout."""
    lib = ctypes.CDLL("libespeak-ng.so.1")
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS)
    if sample_rate <= 0:
        raise SystemExit("espeak_Initialize failed")
    chunks: list[bytes] = []
    events: list[tuple[int, int, int, str]] = []

    def on_audio(wav, n, evs):
        if n > 0:
            chunks.append(ctypes.string_at(wav, n * 2))
        i = 0
        while evs[i].type != EV_END:
            ev = evs[i]
            name = bytes(ev.id).split(b"\0")[0].decode("ascii", "replace") if ev.type == EV_PHONEME else ""
            events.append((ev.type, ev.text_position, ev.sample, name))
            i += 1
        return 0

    callback = _CALLBACK(on_audio)
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(request["voice"].encode()) != 0:
        raise SystemExit(f"espeak-ng has no voice {request['voice']!r}")
    lib.espeak_SetParameter(_PARAM_RATE, request["rate"], 0)
    lib.espeak_SetParameter(_PARAM_PITCH, request["pitch"], 0)
    out = sys.stdout.buffer
    for text in request["texts"]:
        chunks.clear()
        events.clear()
        data = text.encode("utf-8")
        lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        pcm = b"".join(chunks)
        header = {"sample_rate": sample_rate, "samples": len(pcm) // 2, "events": events}
        out.write(json.dumps(header).encode() + b"\n")
        out.write(pcm)
    out.flush()


def speak(voice: str, rate: int, pitch: int, texts: list[str]) -> list[EspeakOutput]:
    """Synthesize ``texts`` with one espeak-ng voice in a fresh child process."""
    request = json.dumps({"voice": voice, "rate": rate, "pitch": pitch, "texts": texts}).encode()
    # This very file, isolated (-I): ``-m`` would look the module up from the current directory first (a recipe
    # runs in its work dir), so what spoke could depend on where the corpus is built.
    proc = subprocess.run([sys.executable, "-I", __file__], input=request, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng ({voice}) failed: {proc.stderr.decode(errors='replace').strip()}")
    outputs, pos, stream = [], 0, proc.stdout
    for _ in texts:
        end = stream.index(b"\n", pos)
        header = json.loads(stream[pos:end])
        pcm_end = end + 1 + 2 * header["samples"]
        outputs.append(EspeakOutput(header["sample_rate"], stream[end + 1:pcm_end],
                                    [tuple(e) for e in header["events"]]))
        pos = pcm_end
    return outputs


if __name__ == "__main__":
    _serve(json.load(sys.stdin))

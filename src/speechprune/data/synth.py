"""Offline spoken-word generation with eSpeak NG, for demos and tests that must run without any download.

eSpeak NG ships with the ``espeakng-loader`` wheel (library + voice data) and is driven here through its C API
with ctypes: ``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS)``, a synth callback that collects the 16-bit
samples, ``espeak_SetVoiceByName`` / ``espeak_SetParameter`` / ``espeak_Synth`` / ``espeak_Synchronize``.

Determinism. The library keeps synthesis state in C ``static`` variables that persist between utterances
and that no API call resets (pitch-flutter phase, automatic gain control, echo buffer, roughness cycle
count), so the same word said twice in one session comes out slightly different, and the result would
depend on what was synthesised before. Each clip is therefore made by a *freshly loaded* library: a
private copy of the shared object is ``dlopen``-ed, initialised, used and ``dlclose``-d again (about 5 ms).
A clip then depends only on its own (word, voice, rate, pitch, range, seed), in any order, in any
process. The private copy also means no other user of libespeak-ng in the process shares (or disturbs)
that state. All of this happens under one lock, so concurrent callers are serialised and calling twice
in one process is safe.

A "speaker" is an eSpeak voice (language/accent + a male or female variant such as ``en-us+f3``) plus a
pitch, pitch range and speaking rate; "takes" of a word jitter rate and pitch a little, like a person
repeating themselves.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import os
import shutil
import tempfile
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from speechprune.data.sources import write_audiofolder
from speechprune.data.types import TARGET_SAMPLING_RATE, AudioDataset, AudioItem
from speechprune.errors import DataError

__all__ = [
    "DEFAULT_WORDS",
    "VoiceSpec",
    "available_voices",
    "speaker_voices",
    "synthesize",
    "synthesize_words",
    "trim_silence",
    "write_audiofolder",
]

DEFAULT_WORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_EE_OK = 0

# (language voice, variant) pairs, alternating male and female so that even two speakers differ clearly.
# All names exist in the espeak-ng-data shipped with espeakng-loader 0.2.x (lang/gmw/en*, voices/!v/*);
# :func:`available_voices` lists what the installed data actually has.
VOICE_PLAN: tuple[tuple[str, str], ...] = (
    ("en-us", "m3"),
    ("en-us", "f3"),
    ("en-gb-x-rp", "m1"),
    ("en", "f2"),
    ("en-gb-scotland", "m2"),
    ("en-029", "f4"),
    ("en-us-nyc", "m4"),
    ("en-gb-x-rp", "f1"),
    ("en", "m5"),
    ("en-us", "f5"),
    ("en-gb-x-gbclan", "m6"),
    ("en-gb-x-gbcwmd", "f2"),
)


@dataclass(frozen=True)
class VoiceSpec:
    """How one synthetic speaker talks: eSpeak voice name, pitch (0-100), pitch range (0-100), rate (wpm)."""

    voice: str
    pitch: int = 50
    range: int = 50
    rate: int = 175

    def describe(self) -> str:
        return f"{self.voice} pitch={self.pitch} range={self.range} rate={self.rate}"


# ------------------------------------------------------------------------------------------ library handling

_LOCK = threading.Lock()
_dlclose = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary  # POSIX / Windows
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_state: dict[str, object] = {}


def _paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as exc:  # pragma: no cover - espeakng-loader is a dependency
        raise DataError("speech synthesis needs the 'espeakng-loader' package (pip install espeakng-loader)") from exc
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def _private_library() -> str:
    """Path of this process's private copy of libespeak-ng (made once per process; removed at exit).

    A forked child makes its own copy, so that neither process can delete the other's file.
    """
    lib = _state.get("lib_copy")
    if lib is None or _state.get("pid") != os.getpid() or not os.path.exists(str(lib)):
        src, _ = _paths()
        tmp = tempfile.mkdtemp(prefix="speechprune-espeak-")
        atexit.register(_cleanup, tmp, os.getpid())
        dst = os.path.join(tmp, "libespeak-ng-private" + Path(src).suffix)
        shutil.copyfile(src, dst)
        _state.update(lib_copy=dst, tmp=tmp, pid=os.getpid())
        lib = dst
    return str(lib)


def _cleanup(tmp: str, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(tmp, ignore_errors=True)


def _still_mapped(path: str) -> bool:
    """Whether ``path`` is still mapped into this process (Linux); then dlclose did not reset its state."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            return any(path in line for line in fh)
    except OSError:
        return False


def _fresh_copy() -> str:
    """A new, never-loaded copy: used only if the platform keeps a dlclose-d library loaded."""
    src, _ = _paths()
    n = int(_state.get("copies", 0)) + 1  # type: ignore[call-overload]
    _state["copies"] = n
    dst = os.path.join(str(_state["tmp"]), f"libespeak-ng-private-{n}{Path(src).suffix}")
    shutil.copyfile(src, dst)
    return dst


def _synth_raw(text: str, spec: VoiceSpec, seed: int) -> tuple[np.ndarray, int]:
    """Synthesise ``text`` with a freshly loaded library; return (int16 samples, sampling rate). Lock held."""
    _, data_path = _paths()
    lib_path = _private_library() if not _state.get("reuse_broken") else _fresh_copy()
    lib = ctypes.CDLL(lib_path)
    handle = lib._handle
    chunks: list[np.ndarray] = []

    def on_samples(samples: ctypes._Pointer, n: int, _events: int) -> int:  # type: ignore[type-arg]
        if n > 0 and samples:
            chunks.append(np.ctypeslib.as_array(samples, shape=(n,)).copy())
        return 0  # 0 = continue synthesis

    callback = _CALLBACK_TYPE(on_samples)
    try:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if sr <= 0:
            raise DataError(f"eSpeak NG failed to initialise with data at {data_path} (code {sr})")
        lib.espeak_SetSynthCallback(callback)
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        err = lib.espeak_SetVoiceByName(spec.voice.encode())
        if err != _EE_OK:
            raise DataError(f"eSpeak NG has no voice {spec.voice!r} (error {err}); see available_voices()")
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed(seed & 0x7FFFFFFF)
        for param, value in ((_RATE, spec.rate), (_PITCH, spec.pitch), (_RANGE, spec.range)):
            err = lib.espeak_SetParameter(param, int(value), 0)
            if err != _EE_OK:
                raise DataError(f"eSpeak NG rejected parameter {param}={value} for {spec.describe()}")
        buf = text.encode("utf-8") + b"\0"
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        err = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise DataError(f"eSpeak NG could not synthesise {text!r} (error {err})")
        lib.espeak_Synchronize()
    finally:
        try:
            lib.espeak_Terminate()
        finally:
            del lib
            _dlclose(handle)
            if not _state.get("reuse_checked"):  # once per process: does dlclose really unload it?
                _state["reuse_checked"] = True
                _state["reuse_broken"] = _still_mapped(lib_path)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return samples, int(sr)


# ------------------------------------------------------------------------------------------------ public API


def available_voices() -> dict[str, list[str]]:
    """The English language voices and the voice variants in the installed eSpeak NG data.

    A voice name for :class:`VoiceSpec` is ``<language>`` or ``<language>+<variant>``, e.g. ``en-us+f3``.
    """
    _, data = _paths()
    langs = sorted(p.name.lower() for p in (Path(data) / "lang").rglob("en*") if p.is_file())
    variants = sorted(p.name for p in (Path(data) / "voices" / "!v").iterdir() if p.is_file())
    return {"languages": langs, "variants": variants}


def trim_silence(samples: np.ndarray, sr: int, threshold_db: float = -40.0, margin_s: float = 0.01) -> np.ndarray:
    """Cut leading and trailing silence: keep from the first to the last 10 ms frame whose RMS is within
    ``threshold_db`` of the loudest frame, plus ``margin_s`` either side (so plosive onsets are not clipped).

    eSpeak pads each utterance with silence; left in, it would let a classifier key on clip length.
    """
    x = np.asarray(samples, dtype=np.float32)
    frame = max(1, int(sr * 0.01))
    n = len(x) // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    peak = rms.max()
    if peak <= 0:
        return x[:0]
    loud = np.flatnonzero(rms >= peak * 10 ** (threshold_db / 20))
    margin = int(sr * margin_s)
    start = max(0, loud[0] * frame - margin)
    end = min(len(x), (loud[-1] + 1) * frame + margin)
    return x[start:end]


def synthesize(text: str, voice: VoiceSpec | str = "en-us", seed: int = 0, trim: bool = True) -> np.ndarray:
    """Speak ``text`` with one voice; float32 mono at 16 kHz, silence trimmed. Deterministic for its arguments."""
    spec = VoiceSpec(voice) if isinstance(voice, str) else voice
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"cannot synthesise an empty text ({text!r})")
    with _LOCK:
        raw, sr = _synth_raw(text, spec, seed)
    if raw.size == 0:
        raise DataError(f"eSpeak NG produced no audio for {text!r} with {spec.describe()}")
    x = soxr.resample(raw.astype(np.float32) / 32768.0, sr, TARGET_SAMPLING_RATE, quality="HQ")
    if trim:
        x = trim_silence(x, TARGET_SAMPLING_RATE)
    if x.size == 0 or not np.any(x):
        raise DataError(f"eSpeak NG produced only silence for {text!r} with {spec.describe()}")
    return np.ascontiguousarray(x, dtype=np.float32)


def speaker_voices(n: int, seed: int = 0) -> list[VoiceSpec]:
    """``n`` speaker definitions: voice ``k`` comes from :data:`VOICE_PLAN` (cycled), with pitch, range and
    rate drawn from ``seed`` and ``k``. Speakers beyond the plan reuse a voice at a clearly different pitch."""
    if n < 1:
        raise DataError(f"need at least one speaker, got {n}")
    out = []
    for k in range(n):
        lang, variant = VOICE_PLAN[k % len(VOICE_PLAN)]
        cycle = k // len(VOICE_PLAN)
        rng = np.random.default_rng([seed, k])
        pitch = int(np.clip(rng.integers(35, 66) + (cycle * 17 % 40) * (1 if cycle % 2 else -1), 5, 95))
        out.append(
            VoiceSpec(
                voice=f"{lang}+{variant}",
                pitch=pitch,
                range=int(rng.integers(35, 76)),
                rate=int(rng.integers(140, 201)),
            )
        )
    return out


def _take_spec(spec: VoiceSpec, seed: int, speaker: int, take: int, word: str) -> tuple[VoiceSpec, int]:
    """A take's small variation of its speaker (rate +-6 %, pitch +-3, range +-5) and its noise seed."""
    rng = np.random.default_rng([seed, speaker, take, zlib.crc32(word.encode())])
    varied = VoiceSpec(
        voice=spec.voice,
        pitch=int(np.clip(spec.pitch + rng.integers(-3, 4), 0, 100)),
        range=int(np.clip(spec.range + rng.integers(-5, 6), 0, 100)),
        rate=int(np.clip(round(spec.rate * rng.uniform(0.94, 1.06)), 80, 450)),
    )
    return varied, int(rng.integers(0, 2**31 - 1))


def synthesize_words(
    words: Sequence[str] = DEFAULT_WORDS,
    speakers: int = 4,
    takes: int = 3,
    seed: int = 0,
    name: str = "synth_words",
) -> AudioDataset:
    """A small spoken-word dataset: every speaker says every word ``takes`` times.

    Label columns are ``word`` and ``speaker`` (``s00``, ``s01``, ...), the group column is ``speaker``; each
    item also carries ``take`` and ``voice`` (the exact voice settings) in its labels. Audio is float32 mono
    16 kHz in memory, leading/trailing silence trimmed. Same arguments -> identical samples.
    Items are ordered speaker, then word, then take; keys are ``<speaker>_<word>_<take>``.
    """
    words = [str(w) for w in words]
    if not words:
        raise DataError("no words to synthesise")
    empty = [w for w in words if not w.strip()]
    if empty:
        raise DataError(f"cannot synthesise empty word(s): {empty}")
    if len(set(words)) != len(words):
        raise DataError(f"duplicate words in {words}")
    if takes < 1:
        raise DataError(f"need at least one take, got {takes}")
    specs = speaker_voices(speakers, seed)
    items: list[AudioItem] = []
    for k, spec in enumerate(specs):
        spk = f"s{k:02d}"
        for word in words:
            for t in range(takes):
                varied, noise_seed = _take_spec(spec, seed, k, t, word)
                audio = synthesize(word, varied, seed=noise_seed)
                items.append(
                    AudioItem(
                        key=f"{spk}_{_safe(word)}_{t}",
                        labels={"word": word, "speaker": spk, "take": str(t), "voice": varied.describe()},
                        group=spk,
                        array=audio,
                        sampling_rate=TARGET_SAMPLING_RATE,
                    )
                )
    return AudioDataset(items, ["word", "speaker"], "speaker", name)


def _safe(word: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in word)

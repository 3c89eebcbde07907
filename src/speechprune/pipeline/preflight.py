"""Everything ``speechprune run`` will need, checked when the configuration is loaded — before any model loads or
any stage starts. Each stage's own options object is built once from the configuration and validated exactly as the
stage will (training, splits, analysis, mimickers, budgets and pruning options), so a bad budget or split fraction
fails in a second with the key that holds it instead of after minutes of analysis and fine-tuning. (Each
compression's own options are checked by its plug-in's ``validate``.)"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from speechprune.errors import ConfigError, SpeechpruneError


@contextlib.contextmanager
def _key(name: str) -> Iterator[None]:
    try:
        yield
    except ConfigError:
        raise
    except SpeechpruneError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def check_run_config(cfg: Any) -> None:
    from speechprune.utils.checks import check_finite, check_seed

    with _key("seed"):
        check_seed(cfg.seed)
    with _key("batch_size"):
        if cfg.batch_size < 1:
            raise SpeechpruneError(f"must be >= 1, got {cfg.batch_size}")
    with _key("profile_seconds"):
        check_finite(cfg.profile_seconds, "profile_seconds", low=0.0, low_open=True)
    with _key("latency_repeats"):
        if cfg.latency_repeats < 0:
            raise SpeechpruneError(f"must be >= 0, got {cfg.latency_repeats}")
    if cfg.window is not None:
        with _key("window"):
            check_finite(cfg.window, "window", low=0.0, low_open=True)
    if cfg.cache_dir:
        with _key("cache_dir"):
            from speechprune.utils.outputs import check_dir_target

            check_dir_target(cfg.cache_dir, "feature cache")
    with _key("split"):
        cfg.split.spec(seed=cfg.seed)  # SplitSpec refuses conflicts, bad fractions and seeds
    with _key("train"):
        _train_config(cfg, cfg.train.epochs)
    if cfg.analysis.enabled:
        with _key("analysis"):
            from speechprune.analysis.runner import AnalysisConfig

            if cfg.analysis.permutations < 0 or cfg.analysis.max_pairs < 1:
                raise SpeechpruneError("permutations must be >= 0 and max_pairs >= 1")
            AnalysisConfig(labels=cfg.analysis_labels, metrics=list(cfg.analysis.metrics),
                           similarity=list(cfg.analysis.similarity), permutations=cfg.analysis.permutations,
                           max_pairs=cfg.analysis.max_pairs, batch_size=cfg.batch_size,
                           split_column=cfg.split.split_column, test_groups=list(cfg.split.test_groups) or None,
                           seed=cfg.seed).validate()
    # the compressions' own options are validated by their plug-ins (pipeline.config._check_semantics)


def _train_config(cfg: Any, epochs: int, **changes: Any) -> Any:
    from speechprune.train.loop import TrainConfig

    t = cfg.train
    options = dict(epochs=epochs, batch_size=t.batch_size, lr=t.lr, head_lr=t.head_lr, schedule=t.schedule,
                   warmup_ratio=t.warmup_ratio, freeze_front_end=t.freeze_front_end, patience=t.patience,
                   seed=cfg.seed, mixed_precision=t.mixed_precision, max_seconds=t.max_seconds,
                   report_to=t.report_to)
    return TrainConfig(**{**options, **changes}).validate()

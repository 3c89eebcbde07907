"""The Python API: one function per command, taking the options dataclass the command builds from its flags.

=====================  =======================================================  ==========================
function               options                                                  command
=====================  =======================================================  ==========================
:func:`finetune`       :class:`~speechprune.train.loop.TrainConfig`             ``speechprune finetune``
:func:`analyze`        :class:`~speechprune.analysis.runner.AnalysisConfig`     ``speechprune analyze``
:func:`prune_layers`   :class:`LayerPruneOptions`                               ``speechprune prune layers``
:func:`prune_structured` :class:`~speechprune.compress.structured.train.PruneOptions` + ``TrainConfig``
                                                                                ``speechprune prune structured``
:func:`distill`        :class:`~speechprune.compress.distill.train.DistillConfig`  ``speechprune distill``
:func:`run`            :class:`~speechprune.pipeline.config.RunConfig`          ``speechprune run``
=====================  =======================================================  ==========================

Each dataclass is the one home of its command's defaults (``tests/test_option_defaults.py`` holds every CLI flag
to it). Splits are a :class:`~speechprune.data.splits.SplitSpec`; ``None`` means the command's usual choice
(the split recorded in a fine-tuned model's ``training.json`` where there is one). ``data`` is a spec (folder,
manifest, ``hf:NAME``) or an already loaded :class:`~speechprune.data.types.AudioDataset`. Example::

    from speechprune import api
    from speechprune.train.loop import TrainConfig

    api.finetune("tiny:wav2vec2", "data/fsdd", "word", "runs/fsdd", TrainConfig(epochs=2))
    api.prune_layers("runs/fsdd", "runs/fsdd-k3", api.LayerPruneOptions(keep=3))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechprune.errors import SpeechpruneError

__all__ = ["LayerPruneOptions", "analyze", "distill", "finetune", "prune_layers", "prune_structured", "run"]


def _data(data: Any, columns: list[str], group: str | None, segments_dir: str | None = None) -> Any:
    """``data`` as loaded: an :class:`~speechprune.data.types.AudioDataset` as it is, else a spec to load (an
    audiofolder, a CSV/JSONL manifest or ``hf:NAME[:CONFIG][:SPLIT]``) with these label columns."""
    from speechprune.data.sources import load_data

    if not isinstance(data, (str, Path)):
        return data
    kwargs: dict[str, Any] = {"segments_dir": Path(segments_dir)} if segments_dir else {}
    return load_data(data, label_columns=[c for c in columns if c] or None, group_column=group, **kwargs)


def _recorded_split(model: str | Path) -> Any:
    """The split a speechprune fine-tuning recorded in the model folder's ``training.json``, if any."""
    from speechprune.data.splits import SplitSpec

    path = Path(model) / "training.json"
    spec = json.loads(path.read_text()).get("split_spec") if path.is_file() else None
    return SplitSpec(**spec) if spec else None


def finetune(model: str, data: str, label: str, out: str | Path, train: Any = None, split: Any = None, *,
             group: str | None = None, window: float | None = None, keep: int | None = None, resume: bool = False,
             overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``model`` for ``label`` with the standard head (``train``: a ``TrainConfig``); returns the summary
    also written to ``out/training.json``."""
    from speechprune.models import load_encoder
    from speechprune.train.finetune import finetune as run_finetune
    from speechprune.train.finetune import prepare_output
    from speechprune.train.loop import TrainConfig
    from speechprune.data.splits import SplitSpec

    cfg = (train or TrainConfig()).validate()
    split = split or SplitSpec(seed=cfg.seed)
    out = Path(out)
    prepare_output(out, resume=resume, overwrite=overwrite)  # fail before loading anything
    ds = _data(data, [label, split.split_column], group)
    enc = load_encoder(model, window_seconds=window)
    if keep is not None:
        enc = enc.keep_layers(keep)
    return run_finetune(enc, ds, label, out, cfg, split, resume=resume, overwrite=overwrite, progress=progress)


def analyze(model: str, data: str, out: str | Path, options: Any, *, group: str | None = None,
            window: float | None = None, segments_dir: str | None = None, cache_dir: str | Path | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Layer similarity, convexity and probes (``options``: an ``AnalysisConfig``) written to ``out``."""
    from speechprune.analysis.runner import run_analysis
    from speechprune.models import load_encoder

    options.validate()
    ds = _data(data, list(options.labels), group, segments_dir)
    from speechprune.features.window_advice import warn_if_window_too_long

    enc = load_encoder(model, window_seconds=window, device=options.device)
    warn_if_window_too_long(enc, ds)
    return run_analysis(enc, ds, options, Path(out), cache_dir=Path(cache_dir) if cache_dir else None,
                        progress=progress)


@dataclass
class LayerPruneOptions:
    """``speechprune prune layers``: exactly one of ``by="convexity"``, ``keep``, ``drop``, ``no_retrain``."""

    by: str | None = None
    keep: int | None = None
    drop: list[int] | None = None
    no_retrain: bool = False
    #: Removal orders for ``no_retrain`` (:data:`speechprune.compress.layers.ORDERS`).
    orders: list[str] = field(default_factory=lambda: ["backward", "forward", "block-influence",
                                                       "knn-block-influence"])
    #: ``by="convexity"``: take the shallowest layer within this many points of the best.
    tolerance: float = 0.0
    batch_size: int = 8
    #: Clip length for the MACs of the removal curve.
    profile_seconds: float = 1.0
    #: Training clips used to measure block influence.
    influence_clips: int = 200

    def validate(self) -> "LayerPruneOptions":
        chosen = [name for name, on in (("--by", self.by), ("--keep", self.keep is not None), ("--drop", self.drop),
                                        ("--no-retrain", self.no_retrain)) if on]
        if len(chosen) != 1:
            raise SpeechpruneError("give exactly one of --by convexity, --keep, --drop, --no-retrain"
                                   + (f" (got {', '.join(chosen)})" if chosen else ""))
        if self.by is not None and self.by != "convexity":
            raise SpeechpruneError(f"--by supports 'convexity' only, got {self.by!r}")
        return self


def prune_layers(model: str, out: str | Path, options: LayerPruneOptions, split: Any = None, *,
                 data: str | None = None, label: str | None = None, group: str | None = None,
                 window: float | None = None, overwrite: bool = False, progress: bool = True,
                 log: Any = None) -> dict[str, Any]:
    """Prune whole layers of ``model`` into ``out`` (or, with ``no_retrain``, write removal curves to ``out``);
    returns what the command prints as JSON."""
    from speechprune.models import load_encoder

    log = log or (lambda _m: None)
    from speechprune.utils.outputs import claim_output

    options.validate()
    out = Path(out)
    claim_output(out, overwrite=overwrite, command="prune layers")  # usable, unused (or --overwrite), locked
    if (options.by or options.no_retrain) and not (data and label):
        raise SpeechpruneError(f"{'--by' if options.by else '--no-retrain'} needs --data and --label")
    enc = load_encoder(model, window_seconds=window)
    if options.no_retrain:
        from speechprune.data.splits import SplitSpec

        spec = split or _recorded_split(model) or SplitSpec()
        return _removal(enc, data, label, group, spec, options, out, progress, log)
    meta: dict[str, Any] = {}
    if options.keep is not None:
        pruned = enc.keep_layers(options.keep)
    elif options.drop:
        pruned = enc.drop_layers(list(options.drop))
    else:
        pruned, meta = _by_convexity(enc, data, label, group, options, progress, log)
    drop = ",".join(map(str, options.drop)) if options.drop else None
    pruned.save_pretrained(out, metadata={"layer_pruning": meta or {"keep": options.keep, "drop": drop}})
    log(f"kept layers {pruned.kept_layers} of {enc.num_layers} → {out}")
    return {"model_dir": str(out), "kept_layers": pruned.kept_layers, **meta}


def _by_convexity(enc: Any, data: str, label: str, group: Any, options: LayerPruneOptions, progress: bool,
                  log: Any) -> tuple[Any, dict[str, Any]]:
    from speechprune.analysis.convexity import convexity_by_layer
    from speechprune.compress.layers import choose_depth
    from speechprune.features.extract import extract_features

    ds = _data(data, [label], group)
    feats = extract_features(enc, ds, pooling="mean", batch_size=options.batch_size, progress=progress)
    rows = convexity_by_layer(feats, label)
    choice = choose_depth({r["state"]: r["score"] for r in rows}, options.tolerance)
    log("convexity by state: " + ", ".join(f"{r['state']}: {r['score']:.1f}" for r in rows))
    log(f"best layer {choice.best_layer} ({choice.best_score:.1f} %); keeping {choice.depth} layer(s)")
    return enc.keep_layers(choice.depth), {"by": "convexity", "label": label, **choice.to_dict()}


def _removal(enc: Any, data: str, label: str, group: Any, spec: Any, options: LayerPruneOptions, out: Path,
             progress: bool, log: Any) -> dict[str, Any]:
    from speechprune.compress.layers import check_removal_inputs, removal_lines, remove_without_retraining

    orders = list(options.orders)
    check_removal_inputs(enc, orders)
    ds = _data(data, [label, spec.split_column], group or spec.group_column)
    summary = remove_without_retraining(enc, ds, label, spec, orders, out, batch_size=options.batch_size,
                                        profile_seconds=options.profile_seconds,
                                        influence_clips=options.influence_clips, progress=progress)
    for line in removal_lines(summary, enc.num_layers):
        log(line)
    return summary


def prune_structured(model: str, data: str, label: str, out: str | Path, options: Any = None, train: Any = None,
                     split: Any = None, *, group: str | None = None, resume: bool = False, overwrite: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """HJ-Pruning of the fine-tuned classifier ``model`` (``options``: a ``PruneOptions``; ``train``: a
    ``TrainConfig``); the split defaults to the one recorded in the model's ``training.json``."""
    from speechprune.compress.structured.train import PruneOptions
    from speechprune.compress.structured.train import prune_structured as run_prune
    from speechprune.models import load_encoder
    from speechprune.train.finetune import prepare_output
    from speechprune.train.loop import TrainConfig
    from speechprune.data.splits import SplitSpec

    opts = (options or PruneOptions()).validate()
    cfg = (train or TrainConfig()).validate()
    out = Path(out)
    prepare_output(out, resume=resume, overwrite=overwrite)  # fail before loading anything
    spec = split or _recorded_split(model) or SplitSpec(seed=cfg.seed)
    enc = load_encoder(model)
    ds = _data(data, [label, spec.split_column], group or spec.group_column)
    return run_prune(enc, ds, label, out, cfg=cfg, split=spec, options=opts, resume=resume, overwrite=overwrite,
                     progress=progress)


def distill(teacher: str, data: str, label: str, out: str | Path, options: Any = None, split: Any = None, *,
            group: str | None = None, window: float | None = None, latency: bool = True, resume: bool = False,
            overwrite: bool = False, cache_dir: str | Path | None = None, progress: bool = True,
            log: Any = None) -> dict[str, Any]:
    """Distil the fine-tuned classifier ``teacher`` into a small student (``options``: a ``DistillConfig``); the
    split defaults to the one recorded in the teacher's ``training.json``. With ``latency``, teacher and student
    are timed back to back and ``out/latency.json`` is written (also returned under ``"latency"``)."""
    from speechprune.compress.distill.train import DistillConfig
    from speechprune.compress.distill.train import distill as run_distill
    from speechprune.models import load_encoder
    from speechprune.data.splits import SplitSpec

    log = log or (lambda _m: None)
    cfg = options or DistillConfig()
    if split is None:
        split = _recorded_split(teacher)
        if split is not None:
            log(f"splits as in the teacher's training.json: {split.to_dict()}")
    split = split or SplitSpec(seed=cfg.seed)
    out = Path(out)
    enc = load_encoder(teacher, window_seconds=window)
    ds = _data(data, [label], group)
    res = run_distill(enc, ds, label, out, cfg, split, resume=resume, overwrite=overwrite, progress=progress,
                      cache_dir=cache_dir)
    if latency:
        from speechprune.compress.distill import load_student
        from speechprune.compress.distill.evaluate import compare_latency, dummy_student_inputs, teacher_latency_inputs
        from speechprune.utils.io import write_json_atomic

        student = load_student(out)
        lat = compare_latency({"teacher": (enc.model, teacher_latency_inputs(enc)),
                               "student": (student, dummy_student_inputs(student))}, rounds=3, repeats=5)
        lat["latency_gain"] = lat["teacher"]["median_ms"] / lat["student"]["median_ms"]
        lat["mac_gain"] = res["cost"]["mac_gain"]
        write_json_atomic(out / "latency.json", lat)
        res["latency"] = lat
    return res


def run(config: Any = None, overrides: list[str] | None = None, *, progress: bool = True, log: Any = print
        ) -> dict[str, Any]:
    """``speechprune run``: ``config`` is a :class:`~speechprune.pipeline.config.RunConfig`, or the path of a YAML
    file (``None``: overrides only) that ``overrides`` (``key.sub=value``) amend. Returns the report's data."""
    from speechprune.pipeline import load_run_config, run_pipeline
    from speechprune.pipeline.config import RunConfig

    if isinstance(config, RunConfig) and overrides:
        raise SpeechpruneError("overrides go with a YAML path; change the RunConfig's fields instead")
    cfg = config if isinstance(config, RunConfig) else load_run_config(config, overrides)
    return run_pipeline(cfg, progress=progress, log=log)

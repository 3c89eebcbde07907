"""The Python API: one function per command, taking the options dataclass the command builds from its flags.
The commands are built on it: each parses its flags, builds the options, calls its function here and prints the
result (``tests/test_api_cli.py`` fails if a command stops calling its function).

=========================  ============================================================  ==============================
function                   options                                                       command
=========================  ============================================================  ==============================
:func:`finetune`           :class:`~speechprune.train.loop.TrainConfig`                  ``speechprune finetune``
:func:`analyze`            :class:`~speechprune.analysis.runner.AnalysisConfig`          ``speechprune analyze``
:func:`evaluate`           keyword arguments                                             ``speechprune evaluate``
:func:`prune_layers`       :class:`LayerPruneOptions`                                    ``speechprune prune layers``
:func:`prune_structured`   :class:`~speechprune.compress.structured.train.PruneOptions`  ``speechprune prune structured``
                           + ``TrainConfig``
:func:`distill`            :class:`~speechprune.compress.distill.train.DistillConfig`    ``speechprune distill``
:func:`run`                :class:`~speechprune.pipeline.config.RunConfig`               ``speechprune run``
:func:`extract`            keyword arguments                                             ``speechprune extract``
:func:`profile`            keyword arguments                                             ``speechprune profile``
:func:`export_onnx`        keyword arguments                                             ``speechprune export onnx``
=========================  ============================================================  ==============================

Each dataclass is the one home of its command's defaults (``tests/test_option_defaults.py`` holds every CLI flag
to it). A split is a :class:`~speechprune.data.splits.SplitSpec` (used as given) or the
:class:`~speechprune.data.splits.SplitOptions` of the split flags; ``None``, or options that name no split column
and no groups, mean the command's usual choice (the split recorded in a fine-tuned model's ``training.json`` where
there is one). ``data`` is a spec (folder, manifest, ``save_to_disk`` folder, ``hf:NAME``) or an already loaded
:class:`~speechprune.data.types.AudioDataset`. The functions print nothing unless given a
``log`` callable (:func:`run`'s defaults to ``print``). Example::

    from speechprune import api
    from speechprune.train.loop import TrainConfig

    api.finetune("tiny:wav2vec2", "data/fsdd", "word", "runs/fsdd", TrainConfig(epochs=2))
    api.prune_layers("runs/fsdd", "runs/fsdd-k3", api.LayerPruneOptions(keep=3))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechprune.errors import SpeechpruneError

__all__ = ["LayerPruneOptions", "analyze", "distill", "evaluate", "export_onnx", "extract", "finetune", "profile",
           "prune_layers", "prune_structured", "run"]


def _data(data: Any, columns: list[str | None], group: str | None, segments_dir: str | None = None,
          audio_column: str | None = None) -> Any:
    """``data`` loaded with these label columns (empty names and repeats dropped): a spec (audiofolder, CSV/JSONL
    manifest, ``save_to_disk`` folder, ``hf:NAME[:CONFIG][:SPLIT]``), a ``datasets.Dataset``, or an
    :class:`~speechprune.data.types.AudioDataset`, which is taken as it is."""
    from speechprune.data.sources import load_dataset_spec

    return load_dataset_spec(data, list(dict.fromkeys(c for c in columns if c)), group, segments_dir, audio_column)


def _split(model: Any, split: Any, seed: int) -> tuple[Any, bool]:
    """The split to use, and whether it is the one recorded in ``model``'s ``training.json``.

    ``split`` is a :class:`~speechprune.data.splits.SplitSpec` (used as given), a
    :class:`~speechprune.data.splits.SplitOptions` as a user says it (the command's split flags) or ``None``. Options
    that name no split column and no groups — ``None`` included — mean the split the model was fine-tuned with where
    it recorded one (so it is evaluated, pruned or distilled on the clips it was tested on), else these options
    with ``seed``."""
    from speechprune.data.splits import SplitOptions, SplitSpec, recorded_split

    if isinstance(split, SplitSpec):
        return split, False
    opts = split or SplitOptions()
    if not (opts.split_column or opts.test_groups or opts.val_groups):
        recorded = recorded_split(model)
        if recorded is not None:
            return recorded, True
    return opts.spec(seed=seed), False


def _quiet(_message: str) -> None:
    """The default ``log``: the functions print nothing unless given a ``log`` (the commands pass their console)."""


def finetune(model: str, data: Any, label: str, out: str | Path, train: Any = None, split: Any = None, *,
             group: str | None = None, window: float | None = None, keep: int | None = None, resume: bool = False,
             overwrite: bool = False, progress: bool = True, audio_column: str | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` for ``label`` with the standard head (``train``: a ``TrainConfig``; ``split``: a
    ``SplitSpec`` or ``SplitOptions``, default the ``SplitOptions`` defaults with the training seed); returns the
    summary also written to ``out/training.json`` (without ``model_dir`` on a helper process of a multi-process
    launch or an interrupted run)."""
    from speechprune.data.splits import SplitOptions, SplitSpec
    from speechprune.models import load_encoder
    from speechprune.train.finetune import finetune as run_finetune
    from speechprune.train.finetune import prepare_output
    from speechprune.train.loop import TrainConfig

    cfg = (train or TrainConfig()).validate()
    if not isinstance(split, SplitSpec):  # a fine-tuning makes its split (and records it); it reads none
        split = (split or SplitOptions()).spec(seed=cfg.seed)
    out = Path(out)
    prepare_output(out, resume=resume, overwrite=overwrite)  # fail before loading anything
    ds = _data(data, [label, split.split_column], group, audio_column=audio_column)
    enc = load_encoder(model, window_seconds=window)
    if keep is not None:
        enc = enc.keep_layers(keep)
    return run_finetune(enc, ds, label, out, cfg, split, resume=resume, overwrite=overwrite, progress=progress)


def analyze(model: str, data: Any, out: str | Path, options: Any, *, group: str | None = None,
            window: float | None = None, segments_dir: str | None = None, cache_dir: str | Path | None = None,
            overwrite: bool = False, audio_column: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Layer similarity, convexity and probes (``options``: an ``AnalysisConfig``) written to ``out`` as a whole
    (all results or none). On a helper process of a multi-process launch it only helps extract the features and
    returns ``{}``."""
    from speechprune.analysis.runner import run_analysis
    from speechprune.models import load_encoder
    from speechprune.utils.device import place_model, resolve_device
    from speechprune.utils.distributed import is_main_process
    from speechprune.utils.outputs import output_folder

    options.validate()
    device = options.device
    dev = resolve_device(device)
    options.device = str(dev)
    labels = list(options.labels)
    if not is_main_process():  # another process of a multi-process launch: it only helps extract the features
        from speechprune.analysis.runner import analysis_features

        enc = load_encoder(model, window_seconds=window, device=device)
        analysis_features(enc, _data(data, labels, group, segments_dir), options,
                          cache_dir=Path(cache_dir) if cache_dir else None, progress=False)
        return {}
    with output_folder(Path(out), overwrite=overwrite, command="analyze") as tmp:  # all results or none
        ds = _data(data, labels + [options.split_column], group, segments_dir, audio_column)
        enc = load_encoder(model, window_seconds=window)
        place_model(enc.model, dev, options.dtype)
        from speechprune.features.window_advice import warn_if_window_too_long

        warn_if_window_too_long(enc, ds)
        return run_analysis(enc, ds, options, tmp, cache_dir=Path(cache_dir) if cache_dir else None,
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
                 data: Any = None, label: str | None = None, group: str | None = None,
                 window: float | None = None, seed: int = 0, device: str = "auto", overwrite: bool = False,
                 audio_column: str | None = None, progress: bool = True, log: Any = None) -> dict[str, Any]:
    """Prune whole layers of ``model`` into ``out`` (or, with ``no_retrain``, write removal curves to ``out``);
    returns what the command prints as JSON (``no_retrain``: the ``removal.json`` summary). ``split`` (for
    ``no_retrain``) follows :func:`_split`: default the model's recorded split, else the defaults with ``seed``."""
    from speechprune.models import load_encoder
    from speechprune.utils.device import resolve_device
    from speechprune.utils.outputs import claim_output

    log = log or _quiet
    options.validate()
    out = Path(out)
    claim_output(out, overwrite=overwrite, command="prune layers")  # usable, unused (or --overwrite), locked
    if (options.by or options.no_retrain) and not (data and label):
        raise SpeechpruneError(f"{'--by' if options.by else '--no-retrain'} needs --data and --label")
    enc = load_encoder(model, window_seconds=window, device=resolve_device(device))
    if options.no_retrain:
        spec, _ = _split(model, split, seed)
        return _removal(enc, data, label, group, spec, options, out, progress, log, audio_column)
    meta: dict[str, Any] = {}
    if options.keep is not None:
        pruned = enc.keep_layers(options.keep)
    elif options.drop:
        pruned = enc.drop_layers(list(options.drop))
    else:
        pruned, meta = _by_convexity(enc, data, label, group, options, progress, log, audio_column)
    pruned.model.to("cpu")
    drop = ",".join(map(str, options.drop)) if options.drop else None
    pruned.save_pretrained(out, metadata={"layer_pruning": meta or {"keep": options.keep, "drop": drop}})
    log(f"kept layers {pruned.kept_layers} of {enc.num_layers} → {out}")
    return {"model_dir": str(out), "kept_layers": pruned.kept_layers, **meta}


def _by_convexity(enc: Any, data: Any, label: str, group: Any, options: LayerPruneOptions, progress: bool,
                  log: Any, audio_column: str | None) -> tuple[Any, dict[str, Any]]:
    from speechprune.analysis.convexity import convexity_by_layer
    from speechprune.compress.layers import choose_depth
    from speechprune.features.extract import extract_features
    from speechprune.utils.device import model_device

    ds = _data(data, [label], group, audio_column=audio_column)
    feats = extract_features(enc, ds, pooling="mean", batch_size=options.batch_size,
                             device=str(model_device(enc.model)), progress=progress)
    rows = convexity_by_layer(feats, label)
    choice = choose_depth({r["state"]: r["score"] for r in rows}, options.tolerance)
    log("convexity by state: " + ", ".join(f"{r['state']}: {r['score']:.1f}" for r in rows))
    log(f"best layer {choice.best_layer} ({choice.best_score:.1f} %); keeping {choice.depth} layer(s)")
    return enc.keep_layers(choice.depth), {"by": "convexity", "label": label, **choice.to_dict()}


def _removal(enc: Any, data: Any, label: str, group: Any, spec: Any, options: LayerPruneOptions, out: Path,
             progress: bool, log: Any, audio_column: str | None) -> dict[str, Any]:
    from speechprune.compress.base import Task
    from speechprune.compress.layers import check_removal_inputs, removal_lines, remove_without_retraining

    orders = list(options.orders)
    check_removal_inputs(enc, orders)
    task = Task.load(data, label, spec, group=group, audio_column=audio_column)
    summary = remove_without_retraining(enc, task.dataset, task.label, task.split, orders, out,
                                        batch_size=options.batch_size, profile_seconds=options.profile_seconds,
                                        influence_clips=options.influence_clips, progress=progress)
    for line in removal_lines(summary, enc.num_layers):
        log(line)
    return summary


def prune_structured(model: str, data: Any, label: str, out: str | Path, options: Any = None, train: Any = None,
                     split: Any = None, *, group: str | None = None, resume: bool = False, overwrite: bool = False,
                     audio_column: str | None = None, progress: bool = True) -> dict[str, Any]:
    """HJ-Pruning of the fine-tuned classifier ``model`` (``options``: a ``PruneOptions``; ``train``: a
    ``TrainConfig``); the split defaults to the one recorded in the model's ``training.json`` (see :func:`_split`).
    Returns the summary also written to ``out/training.json``."""
    from speechprune.compress.structured.train import PruneOptions
    from speechprune.compress.structured.train import prune_structured as run_prune
    from speechprune.models import load_encoder
    from speechprune.train.finetune import prepare_output
    from speechprune.train.loop import TrainConfig

    opts = (options or PruneOptions()).validate()
    cfg = (train or TrainConfig()).validate()
    out = Path(out)
    prepare_output(out, resume=resume, overwrite=overwrite)  # fail before loading anything
    spec, _ = _split(model, split, cfg.seed)
    enc = load_encoder(model)
    ds = _data(data, [label, spec.split_column], group or spec.group_column, audio_column=audio_column)
    return run_prune(enc, ds, label, out, cfg=cfg, split=spec, options=opts, resume=resume, overwrite=overwrite,
                     progress=progress)


def distill(teacher: str, data: Any, label: str, out: str | Path, options: Any = None, split: Any = None, *,
            group: str | None = None, window: float | None = None, latency: bool = True, resume: bool = False,
            overwrite: bool = False, cache_dir: str | Path | None = None, audio_column: str | None = None,
            progress: bool = True, log: Any = None) -> dict[str, Any]:
    """Distil the fine-tuned classifier ``teacher`` into a small student (``options``: a ``DistillConfig``); the
    split defaults to the one recorded in the teacher's ``training.json`` (see :func:`_split`). With ``latency``,
    teacher and student are timed back to back on the CPU and ``out/latency.json`` is written (also returned under
    ``"latency"``)."""
    from speechprune.compress.distill import distill as run_distill
    from speechprune.compress.distill.train import DistillConfig
    from speechprune.models import load_encoder
    from speechprune.utils.device import resolve_device
    from speechprune.utils.outputs import check_dir_target

    log = log or _quiet
    cfg = options or DistillConfig()
    split, recorded = _split(teacher, split, cfg.seed)
    if recorded:
        log(f"splits as in the teacher's training.json: {split.to_dict()}")
    dev = resolve_device(cfg.stage1.device)
    out = Path(out)
    check_dir_target(out, "--out")  # a usable output folder, before loading anything
    # the split's own columns must be loaded too (a split column given here or recorded by the teacher's
    # fine-tuning; its group column), or the split cannot find them
    ds = _data(data, [label, split.split_column], group or split.group_column, audio_column=audio_column)
    enc = load_encoder(teacher, window_seconds=window, device=dev)
    res = run_distill(enc, ds, label, out, cfg, split, resume=resume, overwrite=overwrite, progress=progress,
                      cache_dir=cache_dir)
    if latency:
        from speechprune.compress.distill import load_student
        from speechprune.compress.distill.evaluate import compare_latency, dummy_student_inputs, teacher_latency_inputs
        from speechprune.utils.io import write_json_atomic

        student = load_student(out)
        enc.model.to("cpu")  # the latency protocol times both on the CPU, one thread
        lat = compare_latency({"teacher": (enc.model, teacher_latency_inputs(enc)),
                               "student": (student, dummy_student_inputs(student))}, rounds=3, repeats=5)
        lat["latency_gain"] = lat["teacher"]["median_ms"] / lat["student"]["median_ms"]
        lat["mac_gain"] = res["cost"]["mac_gain"]
        write_json_atomic(out / "latency.json", lat)
        res["latency"] = lat
    return res


def evaluate(model: str, data: Any, label: str, split: Any = None, *, part: str = "test", group: str | None = None,
             seed: int = 0, batch_size: int = 8, max_seconds: float | None = None, profile_seconds: float = 1.0,
             latency_repeats: int = 20, device: str = "auto", out: str | Path | None = None,
             audio_column: str | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, confusion matrix and cost of the classifier ``model`` on one ``part`` of ``data`` (test,
    validation, train or all); the split defaults to the one recorded in the model's ``training.json`` (see
    :func:`_split`). With ``out``, the result is also written there as JSON."""
    from speechprune.data.splits import make_splits
    from speechprune.models import load_encoder
    from speechprune.train.evaluate import evaluate_classifier
    from speechprune.utils.device import resolve_device
    from speechprune.utils.io import write_json_atomic

    if out is not None:
        from speechprune.utils.outputs import check_file_target

        check_file_target(out, "--out")
    if part not in ("test", "validation", "train", "all"):
        raise SpeechpruneError(f"--split: choose test, validation, train or all, got {part!r}")
    spec, _ = _split(model, split, seed)
    dev = resolve_device(device)
    ds = _data(data, [label, spec.split_column], group or spec.group_column, audio_column=audio_column)
    enc = load_encoder(model, device=dev)
    indices = None if part == "all" else make_splits(ds, label, spec)[part]
    res = evaluate_classifier(enc, ds, label, indices, batch_size=batch_size, max_seconds=max_seconds,
                              profile_seconds=profile_seconds, latency_repeats=latency_repeats, progress=True)
    res.update(model=model, data=data if isinstance(data, (str, Path)) else repr(data), split=part,
               split_spec=spec.to_dict())
    if out:
        write_json_atomic(out, res)
    return res


def extract(model: str, data: Any, *, labels: list[str] | None = None, group: str | None = None,
            pooling: str = "mean", layers: list[int] | None = None, batch_size: int = 8, dtype: str = "fp32",
            device: str = "auto", window: float | None = None, segments_dir: str | None = None,
            chunk_seconds: float = 30.0, final_norm: bool = False, cache_dir: str | Path | None = None,
            bucket: bool | None = None, out: str | Path | None = None, to_dataset: str | Path | None = None,
            overwrite: bool = False, audio_column: str | None = None, progress: bool = True,
            log: Any = None) -> Any:
    """Per-layer features of every clip of ``data`` (``layers``: state indices, ``None`` = all), cached; returns the
    :class:`~speechprune.features.extract.Features`. ``out`` also gets a copy of the features, ``to_dataset`` a
    Hugging Face datasets folder (both claimed before any work; written by the main process of a launch only)."""
    from speechprune.features import extract_features
    from speechprune.features.window_advice import warn_if_window_too_long
    from speechprune.models import load_encoder
    from speechprune.utils.device import place_model, resolve_device
    from speechprune.utils.distributed import is_main_process
    from speechprune.utils.outputs import claim_output

    log = log or _quiet
    dev = resolve_device(device)
    for target in (out, to_dataset):  # before any work: usable, unused (or overwrite) folders, locked
        if target is not None and is_main_process():  # only the main process of a launch writes them
            claim_output(target, overwrite=overwrite, command="extract")
    enc = load_encoder(model, window_seconds=window)
    place_model(enc.model, dev, dtype)
    ds = _data(data, list(labels or []), group, segments_dir, audio_column)
    warn_if_window_too_long(enc, ds)
    feats = extract_features(
        enc, ds, pooling=pooling, layers=layers, batch_size=batch_size, dtype=dtype, device=str(dev),
        final_norm=final_norm, cache_dir=cache_dir, progress=progress and is_main_process(), bucket=bucket,
        chunk_seconds=chunk_seconds,
    )
    if not is_main_process():
        return feats
    if out is not None:
        _copy_features(feats, Path(out), overwrite=overwrite)
    if to_dataset is not None:
        from speechprune.features.to_dataset import save_features_dataset

        save_features_dataset(feats, to_dataset, keys=[it.key for it in ds.items], overwrite=True)  # claimed above
        log(f"[green]datasets folder[/green] → {to_dataset} (datasets.load_from_disk)")
    return feats


def _copy_features(feats: Any, out: Path, *, overwrite: bool) -> None:
    """features.safetensors, run.json and meta.json (with the labels attached now) into ``out``, replaced whole."""
    import shutil

    from speechprune.utils.io import write_json_atomic
    from speechprune.utils.outputs import output_folder

    with output_folder(out, overwrite=overwrite, command="extract") as tmp:
        for name in ("features.safetensors", "run.json"):
            shutil.copy2(feats.path / name, tmp / name)
        write_json_atomic(tmp / "meta.json", feats.meta)


def profile(model: str, *, seconds: float = 1.0, batch_size: int = 1, repeats: int = 20, warmup: int = 3,
            threads: int | None = None, device: str = "auto", dtype: str = "fp32", flop_check: bool = True,
            latency: bool = True, json_out: str | Path | None = None) -> dict[str, Any]:
    """Parameters and analytic MACs per part, an optional FlopCounter cross-check, latency and peak memory of
    ``model`` (for Whisper its encoder); returns the report, also written to ``json_out`` (atomically) if given."""
    from speechprune.models import load_encoder
    from speechprune.profile import profile_model
    from speechprune.utils.device import resolve_device
    from speechprune.utils.io import write_json_atomic
    from speechprune.utils.precision import normalize_precision

    dtype = normalize_precision(dtype, "--dtype")  # float32/bfloat16 spellings are accepted too
    if dtype not in ("fp32", "bf16"):
        raise SpeechpruneError(f"--dtype {dtype} is not supported by the profiler; use fp32 or bf16")
    device = str(resolve_device(device))  # a clear error for CUDA without CUDA, before loading anything
    if json_out is not None:
        from speechprune.utils.outputs import check_file_target

        check_file_target(json_out, "--json")
    loaded = load_encoder(model).profiled_module.eval()
    report = profile_model(loaded, seconds=seconds, batch_size=batch_size, latency=latency, flop_check=flop_check,
                           warmup=warmup, repeats=repeats, threads=threads, device=device, dtype=dtype, name=model)
    if json_out is not None:
        write_json_atomic(json_out, report)
    return report


def export_onnx(model: str, out: str | Path, *, quantize: str | None = None, data: Any = None,
                label: str | None = None, split: str = "test", split_column: str | None = None,
                max_clips: int | None = None, opset: int = 17, threads: int = 1, seconds: float = 1.0,
                latency_repeats: int = 20, overwrite: bool = False) -> dict[str, Any]:
    """``model`` (any folder speechprune writes) → ONNX fp32 (and int8 with ``quantize="int8"``) in ``out``, checked
    against torch on random clips and, with ``data`` and ``label``, on real ones (``split``: test — the split
    recorded in the folder, or ``split_column``'s — or all); returns the ``export.json`` summary."""
    from speechprune.deploy.onnx import check_opset, require_onnx
    from speechprune.deploy.onnx import export_onnx as run_export

    check_opset(opset)  # the cheap checks first: nothing is loaded or written for a bad flag
    require_onnx()
    if split not in ("test", "all"):
        raise SpeechpruneError(f"--split must be test or all, got {split!r}")
    if data and not label:
        raise SpeechpruneError("--data needs --label (the column the classifier predicts)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise SpeechpruneError(f"{out} exists; choose another OUT or pass --overwrite")
    dataset, indices, extra = None, None, {}
    if data:
        from speechprune.data.splits import SplitSpec, make_splits, recorded_split

        recorded = recorded_split(model) if not split_column else None
        spec = recorded or SplitSpec(split_column=split_column)
        dataset = _data(data, [label, spec.split_column], spec.group_column)
        if split == "test":
            if not (recorded or split_column):
                raise SpeechpruneError(f"{model} records no split: pass --split-column or --split all")
            indices = [int(i) for i in make_splits(dataset, label, spec)["test"]]
        else:
            indices = list(range(len(dataset)))
        if max_clips:
            indices = indices[:max_clips]
        extra = {"data": data if isinstance(data, (str, Path)) else repr(data), "split": split,
                 "split_spec": spec.to_dict()}
    return run_export(model, out, opset=opset, quantize=quantize, dataset=dataset, label=label, indices=indices,
                      threads=threads, seconds=seconds, latency_repeats=latency_repeats, overwrite=overwrite,
                      extra=extra)


def run(config: Any = None, overrides: list[str] | None = None, *, overwrite: bool = False, progress: bool = True,
        log: Any = print) -> dict[str, Any]:
    """``speechprune run``: ``config`` is a :class:`~speechprune.pipeline.config.RunConfig`, or the path of a YAML
    file (``None``: overrides only) that ``overrides`` (``key.sub=value``) amend. The output folder is claimed
    first (an earlier run's is resumed; anything else non-empty needs ``overwrite``). Returns the report's data."""
    from speechprune.pipeline import load_run_config, run_pipeline
    from speechprune.pipeline.config import RunConfig
    from speechprune.utils.outputs import claim_run_output

    if isinstance(config, RunConfig) and overrides:
        raise SpeechpruneError("overrides go with a YAML path; change the RunConfig's fields instead")
    cfg = config if isinstance(config, RunConfig) else load_run_config(config, overrides)
    path = None if isinstance(config, RunConfig) else config
    claim_run_output(cfg.out, overwrite=overwrite, config=path)  # usable, ours or overwrite; locked
    return run_pipeline(cfg, progress=progress, log=log)

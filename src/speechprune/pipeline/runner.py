"""``speechprune run``: analyse, pick, compress, fine-tune, evaluate and report, in one resumable run.

Each stage writes into ``OUT/stages/<stage>.json`` a *key* (a hash of the options it depends on, including the
keys of the stages it reads) and its result. A re-run skips every stage whose key is unchanged, so after a crash
or a change of one option only the affected stages run again; fine-tuning inside a stage resumes from its last
finished epoch. Candidates (the unpruned baseline and every compressed model) are saved under ``OUT/models/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.pipeline.config import RunConfig
from speechprune.utils.fingerprint import hash_json
from speechprune.utils.io import write_json_atomic



class Run:
    """State shared by the stages of one run."""

    def __init__(self, cfg: RunConfig, progress: bool = True, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress = progress
        self.log = log
        self.keys: dict[str, str] = {}
        self.results: dict[str, Any] = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self._dataset = None
        self._encoder = None

    # --- lazily loaded inputs ----------------------------------------------------------------------------------
    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            from speechprune.data.sources import load_dataset_spec

            c = self.cfg
            cols = list(dict.fromkeys([*c.analysis_labels, *([c.split.split_column] if c.split.split_column else [])]))
            self._dataset = load_dataset_spec(c.data, cols, c.group, audio_column=c.audio_column)
        return self._dataset

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from speechprune.models import load_encoder

            self._encoder = load_encoder(self.cfg.model, window_seconds=self.cfg.window)
        return self._encoder

    @property
    def device(self) -> Any:
        """The resolved ``device`` of the run (a :class:`torch.device`; TF32 enabled on CUDA). In a multi-process
        launch the training stages follow the launcher's device per process instead."""
        from speechprune.utils.device import resolve_device

        return resolve_device(self.cfg.device)

    def split_spec(self) -> Any:
        return self.cfg.split.spec(seed=self.cfg.seed)

    def task(self) -> Any:
        from speechprune.compress.base import Task

        return Task(self.dataset, self.cfg.label, self.split_spec())

    def selection_pool(self) -> Any:
        """The training and validation clips (never the test clips), as a dataset: what choices may look at."""
        return self.task().selection_pool()

    def workspace(self) -> Any:
        from speechprune.compress.base import Workspace

        return Workspace(self.out, batch_size=self.cfg.batch_size, profile_seconds=self.cfg.profile_seconds,
                         progress=self.progress, device=self.cfg.device)

    def train_config(self, **changes: Any) -> Any:
        from speechprune.train.loop import TrainConfig

        t = self.cfg.train
        options = dict(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, head_lr=t.head_lr, schedule=t.schedule,
                       warmup_ratio=t.warmup_ratio, freeze_front_end=t.freeze_front_end, patience=t.patience,
                       seed=self.cfg.seed, mixed_precision=t.mixed_precision, max_seconds=t.max_seconds,
                       device=self.cfg.device, report_to=t.report_to)
        return TrainConfig(**{**options, **changes}).validate()

    # --- stage bookkeeping -------------------------------------------------------------------------------------
    def stage(self, name: str, depends: dict[str, Any], fn: Callable[[], Any], *, all_processes: bool = False,
              prepare: Callable[[], Any] | None = None) -> Any:
        """Run ``fn`` unless ``OUT/stages/<name>.json`` holds a result for the same ``depends``.

        In a multi-process launch a training stage (``all_processes``) runs on every process; any other stage runs on
        the main process while the others wait, except for ``prepare`` (e.g. the analysis stage's feature
        extraction), which every process runs together first. Either way only the main process writes the stage
        file, and every process continues with the main process's result read back from it, so all processes agree.
        """
        from speechprune.utils import distributed

        key = hash_json({"stage": name, **depends})
        self.keys[name] = key
        path = self.out / "stages" / f"{name}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                self.results[name] = saved["result"]
                self.skipped.append(name)
                self.log(f"stage {name}: unchanged, reusing {path}")
                return saved["result"]
        main = distributed.is_main_process()
        self.log(f"stage {name}: running")
        t0 = time.perf_counter()
        if prepare is not None:
            prepare()
        if all_processes:
            result = fn()
        else:
            with distributed.solo():  # the others wait at the barrier below: nothing in fn may wait for them
                result = fn() if main else None
        if main:
            write_json_atomic(path, {"key": key, "seconds": time.perf_counter() - t0, "result": result})
        distributed.barrier()
        if not main:
            result = json.loads(path.read_text())["result"]
        self.results[name] = result
        self.ran.append(name)
        return result

    def base_deps(self) -> dict[str, Any]:
        c = self.cfg
        return {"model": c.model, "window": c.window, "data": c.data, "data_fp": self.dataset.fingerprint(),
                "label": c.label, "group": c.group, "split": c.split.__dict__, "seed": c.seed}


def run_pipeline(cfg: RunConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every enabled stage (skipping unchanged ones) and write the report; returns the report's data.

    Compressions are whatever :func:`speechprune.compress.base.methods` lists; each enabled one is one stage.
    """
    from speechprune.compress.base import Candidate, methods
    from speechprune.pipeline import stages
    from speechprune.utils import distributed

    from speechprune.utils.provenance import set_context

    main = distributed.is_main_process()
    run = Run(cfg, progress and main, log if main else (lambda _msg: None))
    from speechprune.utils.device import resolve_device

    # seed, resolved device and config go into every JSON the run writes
    set_context(seed=cfg.seed, config=cfg.to_dict(), device=str(resolve_device(cfg.device)))
    if main:
        run.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.out / "config.resolved.json", cfg.to_dict())
        import yaml

        from speechprune.utils.outputs import write_owned_text

        # never replaces a config.yaml that run did not write (e.g. the input config kept in OUT)
        write_owned_text(run.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False),
                         "# written by speechprune run (the resolved configuration)")
    distributed.barrier()
    base = run.base_deps()
    if cfg.analysis.enabled:
        run.stage("analysis", {**base, "labels": cfg.analysis_labels, "analysis": cfg.analysis.__dict__},
                  lambda: stages.analysis(run), prepare=lambda: stages.analysis_features(run))
    run.stage("baseline", {**base, "train": cfg.train.__dict__}, lambda: stages.baseline(run), all_processes=True)
    candidates = [Candidate.from_dict(c) for c in run.results["baseline"]["candidates"]]
    # a too-small validation split: group-aware cross-validation over the training pool for the choices that allow it
    from speechprune.pipeline.crossval import skipped

    no_cv = skipped(run)  # the same on every process (config and data only); multi-process launches skip it
    if no_cv is not None:
        run.results["crossval"] = no_cv
    else:
        run.stage("crossval", {**base, "train": cfg.train.__dict__, "baseline": run.keys["baseline"],
                               "selection": cfg.selection.__dict__, "batch_size": cfg.batch_size,
                               "profile_seconds": cfg.profile_seconds,
                               "compress": {m.name: cfg.compress[m.name].__dict__ for m in methods()
                                            if cfg.compress[m.name].enabled}},
                  lambda: stages.crossval(run))
    for method in methods():
        options = cfg.compress[method.name]
        if not options.enabled:
            continue
        inputs = {"data": base, "train": {"train": cfg.train.__dict__},
                  "analysis": {"analysis": run.keys.get("analysis")}, "baseline": {"baseline": run.keys["baseline"]},
                  "crossval": {"crossval": run.keys.get("crossval")}}
        depends = {k: v for name in method.inputs for k, v in inputs[name].items()}
        result = run.stage(method.name, {**depends, method.name: options.__dict__},
                           lambda: stages.compress(run, method, options), all_processes=method.trains)
        candidates += [Candidate.from_dict(c, method.name) for c in result.get("candidates", [])]
    # every final candidate predicted once on validation (choices) and test (reported only): intervals, chance guard
    run.stage("evaluate", {**base, "candidates": [(c.name, run.keys.get(c.method)) for c in candidates],
                           "min_retained": cfg.recommend_min_retained, "crossval": run.keys.get("crossval")},
              lambda: stages.evaluate(run, candidates))
    run.stage("profile", {"candidates": [(c.name, run.keys.get(c.method)) for c in candidates],
                          "seconds": cfg.profile_seconds, "repeats": cfg.latency_repeats},
              lambda: stages.profile(run, candidates))
    if cfg.export.onnx:
        run.stage("export", {"candidates": [(c.name, run.keys.get(c.method)) for c in candidates],
                             "export": cfg.export.__dict__, "repeats": cfg.latency_repeats,
                             "seconds": cfg.profile_seconds, "split": base},
                  lambda: stages.export(run, candidates))
    if main:
        report = stages.report(run, candidates)
        report["stages_run"], report["stages_reused"] = run.ran, run.skipped
        write_json_atomic(run.out / "results.json", report)
    distributed.barrier()
    if not main:
        report = json.loads((run.out / "results.json").read_text())
    return report


def retained(acc: float, base: float) -> float:
    return float(acc / base) if base else float("nan")


def as_float_list(xs: Any) -> list[float]:
    return [float(x) for x in np.asarray(xs).ravel()]

"""One shape for every compression: a :class:`Candidate` out, a :class:`Task` and a :class:`Teacher` in, and the
:class:`Compression` interface that truncation, layer removal, distillation and structured pruning implement.

``speechprune run`` knows no method by name: it asks the registry (:func:`methods`) for the registered
compressions, builds each one's options dataclass from its ``compress.<name>`` section, and calls
``method.run(teacher, task, out, train, options)`` for the enabled ones. A fifth method is one new module that
subclasses :class:`Compression` — a ``name``, an ``options`` dataclass (its fields are the ``compress.<name>``
YAML keys and their defaults), the ``inputs`` it needs, and ``run(teacher, task, out, train, options)`` returning
:class:`Candidate` objects — and calls :func:`register`. The built-in four are in
:mod:`speechprune.compress.methods` (``truncation.py`` is the shortest); ``tests/test_compression_plugins.py``
registers a complete toy method from outside the package and sees it in ``run``'s candidates and report.

Stage files (``OUT/stages/<method>.json``) hold candidates as plain data (:meth:`Candidate.to_dict`): a name, a
description, a model folder, numbers. How a candidate is loaded and measured is decided by the registered method
that made it (the stage it was read from), never by anything written in the file, so editing a stage file can
change a number in the report but cannot make speechprune import or call anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from speechprune.data.splits import SplitSpec
from speechprune.errors import SpeechpruneError

#: The test metrics every candidate carries (the report's accuracy columns).
METRICS = ("accuracy", "macro_f1")
#: Fields of older stage files that are never read (``cost_fn`` named a function to import: the method decides).
IGNORED_KEYS = ("cost_fn", "stage", "key")
#: The name candidates of the fine-tuned, unpruned model carry as their method (it is no registered compression).
BASELINE = "baseline"


@dataclass
class Candidate:
    """One model a run compares: the unpruned baseline or one compressed model.

    ``metrics`` are the test-split numbers (``accuracy``, ``macro_f1``); ``provenance`` says how it was made
    (``num_layers``, ``kept_layers``, ``train_seconds``, budget results, …); ``method`` names the registered
    compression that made it, which decides how it is loaded and measured (:meth:`cost`).
    """

    name: str
    kind: str
    model_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    method: str = BASELINE

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON form kept in stage files: ``{"name", "kind", "model_dir", <metrics>, <provenance>}``."""
        return {"name": self.name, "kind": self.kind, "model_dir": self.model_dir, **self.metrics, **self.provenance}

    @classmethod
    def from_dict(cls, data: dict[str, Any], method: str = BASELINE) -> "Candidate":
        """Read a stage file's candidate. ``method`` comes from the stage, not from the file."""
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("name", "kind", "model_dir")):
            raise SpeechpruneError(f"stage {method!r}: a candidate needs the strings name, kind and model_dir; "
                                   f"got {data!r:.200} (delete the stage file to recompute it)")
        rest = {k: v for k, v in data.items() if k not in ("name", "kind", "model_dir", *IGNORED_KEYS)}
        metrics = {k: rest.pop(k) for k in METRICS if k in rest}
        return cls(data["name"], data["kind"], data["model_dir"], metrics, rest, method)

    def load(self) -> Any:
        """The saved model, loaded the way the method that made it saves it."""
        return compression_for(self.method).load(self)

    def cost(self, seconds: float = 1.0, latency_repeats: int = 20) -> dict[str, Any]:
        """Parameters, MACs for a clip of ``seconds`` and median latency over ``latency_repeats`` (see
        :func:`speechprune.train.evaluate.model_cost`), measured the way the method that made it says."""
        return compression_for(self.method).cost(self, seconds, latency_repeats)


@dataclass
class Task:
    """What every model of a run is trained and scored on: the data, the label column and how they are split."""

    dataset: Any  # speechprune.data.types.AudioDataset
    label: str
    split: SplitSpec

    @classmethod
    def load(cls, data: Any, label: str, split: SplitSpec, *, group: str | None = None,
             audio_column: str | None = None) -> "Task":
        """The task of ``label`` on ``data``: a spec (audiofolder, manifest, ``save_to_disk`` folder,
        ``hf:NAME``) or a ``datasets.Dataset``, loaded with the label, the split's column and group column, or an
        :class:`~speechprune.data.types.AudioDataset`, taken as it is. From here on the label travels inside the
        task."""
        from speechprune.data.sources import load_dataset_spec

        columns = [label] if split.split_column in (None, "", label) else [label, split.split_column]
        return cls(load_dataset_spec(data, columns, group or split.group_column, None, audio_column), label, split)

    def parts(self) -> dict[str, Any]:
        """Index arrays ``{"train", "validation", "test"}`` into :attr:`dataset`."""
        from speechprune.data.splits import make_splits

        return make_splits(self.dataset, self.label, self.split)

    def selection_pool(self) -> Any:
        """The training + validation clips as a dataset — everything a *choice* may look at (never the test
        clips: the three-way discipline of issue 14, checked by ``tests/test_pipeline_discipline.py``)."""
        import numpy as np

        parts = self.parts()
        pool = np.sort(np.concatenate([parts["train"], parts["validation"]]))
        return self.dataset.subset([int(i) for i in pool])


@dataclass
class Teacher:
    """What a compression starts from: the fine-tuned unpruned ``baseline`` candidate, the pretrained model it was
    fine-tuned from (loaded on first use), the layer analysis's result when that stage ran, and the ``crossval``
    stage's result (:mod:`speechprune.pipeline.crossval`: cross-validated choices when validation is too small)."""

    baseline: Candidate
    pretrained: Callable[[], Any]
    analysis: dict[str, Any] | None = None
    crossval: dict[str, Any] | None = None

    def load(self) -> Any:
        """The fine-tuned baseline as a :class:`~speechprune.models.adapter.SpeechEncoder`."""
        return self.baseline.load()


@dataclass
class Workspace:
    """Where a compression writes, and the run-wide settings that are no training option.

    Models go to ``root/models/<candidate>`` (:meth:`model_dir`), anything else to ``root/<method>/``
    (:meth:`folder`). ``details`` is kept in the stage file next to the candidates and reaches the report
    (e.g. the depth convexity chose); keep it JSON-friendly.
    """

    root: Path
    batch_size: int = 8  # clips per forward pass outside training
    profile_seconds: float = 1.0  # clip length for MACs computed inside a method
    progress: bool = True
    device: str = "auto"  # where work outside training runs (training follows the TrainConfig's device)
    details: dict[str, Any] = field(default_factory=dict)

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def folder(self, name: str) -> Path:
        return self.root / name

    def torch_device(self) -> Any:
        """:attr:`device` resolved (:func:`speechprune.utils.device.resolve_device`)."""
        from speechprune.utils.device import resolve_device

        return resolve_device(self.device)


class Compression:
    """A compression method: a ``name`` (its ``compress.<name>`` config section and its stage), an ``options``
    dataclass (the only home of its defaults; it must have an ``enabled`` field), and :meth:`run`.

    ``inputs`` lists what the stage's cache key depends on besides the options: ``"data"`` (model, data, label,
    split, seed), ``"train"`` (the run's training options), ``"analysis"`` (the analysis stage), ``"baseline"``
    (the fine-tuned baseline) and ``"crossval"`` (the cross-validation stage). ``trains`` says that :meth:`run`
    trains, so in a multi-process launch it runs on every process (it must then return candidates on the main process only). ``figures`` are
    ``(title, path relative to the run folder)`` pairs the report shows when the file exists.
    """

    name: ClassVar[str]
    options: ClassVar[type]
    inputs: ClassVar[tuple[str, ...]] = ("baseline",)
    trains: ClassVar[bool] = False
    figures: ClassVar[tuple[tuple[str, str], ...]] = ()

    def run(self, teacher: Teacher, task: Task, out: Workspace, train: Any, options: Any) -> list[Candidate]:
        """Build this method's candidates from ``teacher`` for ``task``, writing under ``out``; ``train`` is the
        run's :class:`~speechprune.train.loop.TrainConfig` (seed included)."""
        raise NotImplementedError

    #: What :meth:`cross_validate` decides, in words (the run's record of how each choice was made).
    cv_choice: ClassVar[str] = ""
    #: A choice made on the whole training + validation pool without any held-out clips, in words (for that record).
    pool_choice: ClassVar[str] = ""

    def validate(self, options: Any) -> None:
        """Raise :class:`SpeechpruneError` naming the field for options that cannot work (before any model loads)."""

    def cross_validate(self, fold_model: Any, task: Task, train: Any, held: Any, out: Workspace, seed: int,
                       options: Any) -> list[dict[str, Any]] | None:
        """Evidence for a choice this method makes on validation, from one cross-validation fold: called by the
        ``crossval`` stage (:mod:`speechprune.pipeline.crossval`, when the validation split is too small) with a
        *fold baseline* fine-tuned like the run's baseline on the dataset indices ``train`` only, to be scored on
        ``held``. Returns rows, each with the keys that identify a step (e.g. order and layers removed) plus
        ``correct`` and ``n`` on the held-out clips; the stage sums them over folds and hands the pooled rows
        (``cv_accuracy``, ``n_cv``) to :meth:`run` as ``teacher.crossval["methods"][name]["rows"]``. ``None``: the
        method has no such choice (the default)."""
        return None

    def load(self, candidate: Candidate) -> Any:
        from speechprune.models import load_encoder

        return load_encoder(candidate.model_dir)

    def cost(self, candidate: Candidate, seconds: float, latency_repeats: int) -> dict[str, Any]:
        from speechprune.train.evaluate import model_cost

        return model_cost(self.load(candidate), seconds=seconds, latency_repeats=latency_repeats)

    def forward(self, candidate: Candidate, seconds: float) -> Callable[[], Any]:
        """A zero-argument callable running one inference forward on a random clip of ``seconds`` (the profile
        stage times all candidates' forwards interleaved)."""
        from speechprune.profile.latency import model_forward

        return model_forward(self.load(candidate).model, seconds)

    def predict(self, model: Any, dataset: Any, indices: Any, batch_size: int = 8) -> list[str]:
        """Predicted class names of ``model`` (from :meth:`load`) for ``dataset[indices]``."""
        from speechprune.models.classifier import class_names
        from speechprune.train.evaluate import predict_logits

        if len(indices) == 0:
            return []
        classes = class_names(model)
        return [classes[k] for k in predict_logits(model, dataset, indices, batch_size=batch_size).argmax(1)]


class _Baseline(Compression):
    """The fine-tuned unpruned model: loaded and measured like any transformers classifier (not registered)."""

    name = BASELINE


_REGISTRY: dict[str, Compression] = {}


def register(method: Compression) -> Compression:
    """Add ``method`` to the compressions ``speechprune run`` offers (in registration order)."""
    if not dataclasses.is_dataclass(getattr(method, "options", None)) or "enabled" not in {
            f.name for f in dataclasses.fields(method.options)}:
        raise TypeError(f"{type(method).__name__}.options must be a dataclass with an 'enabled' field")
    if method.name in _REGISTRY and type(_REGISTRY[method.name]) is not type(method):
        raise ValueError(f"a compression named {method.name!r} is already registered")
    if method.name == BASELINE:
        raise ValueError(f"{BASELINE!r} is the unpruned model's name")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def methods() -> list[Compression]:
    """The registered compressions, built-in ones first (registered when ``speechprune.compress`` is imported)."""
    return list(_REGISTRY.values())


def compression_for(name: str) -> Compression:
    """The registered compression called ``name`` (``"baseline"``: how the unpruned model is loaded/measured)."""
    if name == BASELINE:
        return _Baseline()
    for m in methods():
        if m.name == name:
            return m
    raise SpeechpruneError(f"no compression method {name!r}; registered: {', '.join(m.name for m in methods())}")


def finetune_candidate(encoder: Any, task: Task, out: Workspace, train: Any, name: str, kind: str,
                       method: str = BASELINE, **provenance: Any) -> list[Candidate]:
    """Fine-tune ``encoder`` on ``task`` into ``out.model_dir(name)`` (resuming an interrupted run there) and
    describe it as a candidate; on a non-main process of a multi-process run: ``[]``."""
    from speechprune.train.finetune import finetune

    path = out.model_dir(name)
    res = finetune(encoder, task.dataset, task.label, path, train, task.split, **resumable(path),
                   progress=out.progress, latency_repeats=0, metadata=provenance)
    if "test" not in res:  # another process of a multi-process run: the main process evaluates and saves
        return []
    return [Candidate(name, kind, str(path), metrics_of(res["test"]), {
        "train_seconds": res["training"]["train_seconds"], "num_layers": res["num_layers"],
        "kept_layers": res["kept_layers_of_source"], **provenance}, method)]


def resumable(path: Path) -> dict[str, bool]:
    """``resume``/``overwrite`` for training into ``path``: continue an interrupted run there, else start afresh."""
    from speechprune.train.finetune import work_dir_for

    resume = work_dir_for(path).exists()
    return {"resume": resume, "overwrite": not resume}


def metrics_of(test: dict[str, Any]) -> dict[str, float]:
    """The candidate metrics out of an evaluation summary."""
    return {k: test[k] for k in METRICS}

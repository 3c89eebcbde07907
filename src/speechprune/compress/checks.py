"""Conformance checks every compression plug-in must pass, in the spirit of scikit-learn's ``check_estimator``.

``tests/test_compression_conformance.py`` runs :func:`check_compression` for every registered method; a new
method gets the same checks by registering itself. What is checked:

* **options** — a dataclass with an ``enabled`` field, a default for every field, JSON-friendly (stage keys hash
  it), and the defaults pass :meth:`Compression.validate`;
* **candidate shape** — :meth:`Compression.run` returns :class:`Candidate` objects with unique names, a
  description, this method's name, test ``accuracy``/``macro_f1`` in [0, 1], a model folder under
  ``out.model_dir``, and plain data that round-trips through :meth:`Candidate.to_dict` /
  :meth:`Candidate.from_dict` with nothing that names code (the stage file is data);
* **budget met** — a candidate that reports ``budget_met`` met it;
* **export reloads** — every model folder loads again (:meth:`Candidate.load`) and is measured
  (:meth:`Candidate.cost`: parameters and MACs > 0);
* **re-run** — running again into the same folders (what ``speechprune run`` does after an interruption)
  gives the same candidates with the same metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from speechprune.compress.base import METRICS, Candidate, Compression, Task, Teacher, Workspace, compression_for

_CODE = re.compile(r"\b[A-Za-z_][\w.]*:[A-Za-z_]\w*\b")  # "module:function"


def check_options(method: Compression) -> Any:
    """The options dataclass is well formed; returns its defaults."""
    cls = method.options
    assert dataclasses.is_dataclass(cls), f"{method.name}: options must be a dataclass"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert "enabled" in fields, f"{method.name}: options need an 'enabled' field"
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    assert not missing, f"{method.name}: options fields without a default: {missing}"
    defaults = cls()
    json.dumps(dataclasses.asdict(defaults))
    method.validate(defaults)
    return defaults


def check_candidates(method: Compression, candidates: list[Candidate], out: Workspace) -> None:
    """Candidate shape, budget met, export reloads."""
    assert isinstance(candidates, list) and all(isinstance(c, Candidate) for c in candidates), \
        f"{method.name}: run() must return a list of Candidate"
    names = [c.name for c in candidates]
    assert len(set(names)) == len(names), f"{method.name}: duplicate candidate names {names}"
    stage = {"candidates": [c.to_dict() for c in candidates], **out.details}
    text = json.dumps(stage)  # the stage file is plain JSON
    assert "cost_fn" not in text, f"{method.name}: candidates must not name code (cost_fn)"
    for c in candidates:
        where = f"{method.name}: candidate {c.name}"
        assert c.kind and c.method == method.name, f"{where}: kind must be set and method must be {method.name!r}"
        assert set(METRICS) <= set(c.metrics), f"{where}: metrics need {METRICS}"
        assert all(0.0 <= c.metrics[m] <= 1.0 for m in METRICS), f"{where}: metrics outside [0, 1]: {c.metrics}"
        assert Path(c.model_dir) == out.model_dir(c.name) and Path(c.model_dir).is_dir(), \
            f"{where}: the model must be saved in out.model_dir({c.name!r})"
        assert not any(isinstance(v, str) and _CODE.fullmatch(v) for v in c.to_dict().values()), \
            f"{where}: a value looks like an import path"
        assert Candidate.from_dict(json.loads(json.dumps(c.to_dict())), method.name) == c, \
            f"{where}: to_dict/from_dict must round-trip"
        if "budget_met" in c.provenance:
            assert c.provenance["budget_met"], f"{where}: budget not met ({c.provenance})"
        assert c.load() is not None, f"{where}: the saved model does not load"
        cost = c.cost(1.0, 1)
        assert cost["params_total"] > 0 and cost["macs_per_second"] > 0, f"{where}: cost {cost}"


def check_compression(method: str | Compression, teacher: Teacher, task: Task, out: Workspace, train: Any,
                      options: Any = None, *, rerun: bool = True) -> list[Candidate]:
    """Run ``method`` (a registered name or a :class:`Compression`) with ``options`` (default: its defaults,
    enabled) and check it as described in the module docstring; returns its candidates."""
    method = compression_for(method) if isinstance(method, str) else method
    defaults = check_options(method)
    options = options if options is not None else dataclasses.replace(defaults, enabled=True)
    method.validate(options)
    first = method.run(teacher, task, out, train, options)
    check_candidates(method, first, out)
    if rerun:
        out.details.clear()
        again = method.run(teacher, task, out, train, options)
        assert [c.name for c in again] == [c.name for c in first], f"{method.name}: a re-run made other candidates"
        for a, b in zip(first, again):
            for m in METRICS:
                assert math.isclose(a.metrics[m], b.metrics[m], abs_tol=1e-6), \
                    f"{method.name}: re-run changed {a.name}'s {m}: {a.metrics[m]} -> {b.metrics[m]}"
    return first

"""Issue 15, acceptance: every CLI command over a generated set of bad inputs — bad data, bad models, bad options,
bad output/cache paths, bad configs — ends with exit code 2, exactly one ``error:`` line that names the culprit, no
traceback, and the data, output and cache folders exactly as they were.

Commands run in this process through the real entry point (``cli.guard.run``) with built-in tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _hardening import audiofolder, cli, snapshot

# command -> argument template; DATA/MODEL/OUT/CACHE are substituted, OPTS marks where option mutations go
COMMANDS: dict[str, list[str]] = {
    "info": ["info", "MODEL"],
    "extract": ["extract", "MODEL", "DATA", "--cache-dir", "CACHE", "--no-progress"],
    "analyze": ["analyze", "MODEL", "DATA", "-l", "word", "-o", "OUT", "--cache-dir", "CACHE", "--no-progress"],
    "finetune": ["finetune", "MODEL", "DATA", "-l", "word", "-o", "OUT", "--epochs", "1", "--no-progress"],
    "evaluate": ["evaluate", "CLASSIFIER", "DATA", "-l", "word", "--latency-repeats", "0", "--split", "all"],
    "prune layers": ["prune", "layers", "MODEL", "-o", "OUT", "--keep", "1"],
    "prune structured": ["prune", "structured", "CLASSIFIER", "DATA", "-l", "word", "-o", "OUT", "--no-progress"],
    "distill": ["distill", "CLASSIFIER", "DATA", "-l", "word", "-o", "OUT", "--no-progress"],
    "profile": ["profile", "MODEL", "--no-latency", "--no-flop-check"],
}
RUN = ["run", "model=MODEL", "data=DATA", "label=word", "out=OUT", "cache_dir=CACHE", "--no-progress"]

# option mutations: (option, value, culprit, commands that have the option)
OPTIONS = [
    ("--batch-size", "0", "batch-size", ["extract", "analyze", "finetune", "evaluate", "prune structured"]),
    ("--seed", "-1", "seed", ["analyze", "finetune", "evaluate", "prune structured", "distill"]),
    ("--layers", "3-1", "3-1", ["extract", "analyze"]),
    ("--layers", "0,99", "99", ["extract", "analyze"]),
    ("--lr", "inf", "lr", ["finetune", "prune structured", "distill"]),
    ("--lr", "nan", "lr", ["finetune"]),
    ("--test-fraction", "1.5", "test_fraction", ["finetune", "evaluate", "prune structured", "distill"]),
    ("--pooling", "bogus", "bogus", ["extract", "analyze"]),
    ("--budget", "macs=1.5", "macs=1.5", ["prune structured"]),
    ("--epochs", "0", "epochs", ["finetune", "prune structured"]),
    ("--label", "nosuchcolumn", "nosuchcolumn", ["analyze", "finetune", "evaluate", "prune structured", "distill"]),
]
RUN_KEYS = [("seed=-1", "seed"), ("split.test_fraction=0", "test_fraction"), ("train.lr=.inf", "lr"),
            ("compress.structured.enabled=true", None), ("bogus_key=1", "bogus_key"), ("label=nosuchcolumn", "nosuchcolumn"),
            ("compress.removal.orders=sideways", "sideways"), ("batch_size=0", "batch_size")]


def _bad_data(root: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (data path, culprit) for every kind of bad data."""
    out: dict[str, tuple[Path, str]] = {"missing folder": (root / "nope", "nope")}
    (root / "notdata.txt").write_text("hello")
    out["a plain file"] = (root / "notdata.txt", "notdata.txt")
    (root / "empty").mkdir()
    out["no metadata"] = (root / "empty", "empty")
    d = audiofolder(root / "corrupt", n=8)
    (d / "c2.wav").write_bytes(b"RIFF\x00\x00not really a wav file at all" * 10)
    out["corrupt audio"] = (d, "c2.wav")
    d = audiofolder(root / "zero", n=8)
    (d / "c3.wav").write_bytes(b"")
    out["empty audio file"] = (d, "c3.wav")
    d = audiofolder(root / "escape", n=8)
    (d / "metadata.csv").write_text((d / "metadata.csv").read_text() + "../outside.wav,w0,s0\n")
    (root / "outside.wav").write_bytes((d / "c0.wav").read_bytes())
    out["path out of the folder"] = (d, "../outside.wav")
    d = audiofolder(root / "nolabel", n=8, columns="file_name,wort,speaker")
    out["label column missing"] = (d, "word")
    d = audiofolder(root / "badcsv", n=8)
    (d / "metadata.csv").write_text((d / "metadata.csv").read_text() + "c0.wav,w0\n")
    out["ragged metadata"] = (d, "metadata.csv")
    return out


def _bad_models(root: Path) -> dict[str, tuple[str, str]]:
    from speechprune.models import load_encoder

    out = {"missing model": (str(root / "nomodel"), "nomodel"), "unsupported family": ("tiny:conformer", "conformer")}
    folder = root / "truncated"
    load_encoder("tiny:wav2vec2").save_pretrained(folder)
    os.truncate(folder / "model.safetensors", 100)
    out["truncated weights"] = (str(folder), str(folder))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    good = audiofolder(root / "good", n=12)
    (root / "cache").mkdir()
    (root / "a-file").write_text("x")
    (root / "bad.yaml").write_text("model: [unclosed\n")
    from speechprune.models import load_encoder
    from speechprune.models.classifier import add_classification_head

    add_classification_head(load_encoder("tiny:wav2vec2"), ["w0", "w1"], seed=0).save_pretrained(root / "clf")
    return {"root": root, "good": good, "data": _bad_data(root), "models": _bad_models(root)}


def _cases(world: dict) -> list[tuple[str, list[str], str, dict]]:
    root, good = world["root"], world["good"]
    base = {"MODEL": "tiny:wav2vec2", "CLASSIFIER": str(root / "clf"), "DATA": str(good), "OUT": str(root / "out"), "CACHE": str(root / "cache")}
    cases = []

    def add(label: str, template: list[str], culprit: str, extra: list[str] = (), **subst: str) -> None:
        values = {**base, **subst}
        args = []
        for a in template:
            for k, v in values.items():
                a = a.replace(k, v) if k in a and (a == k or a.endswith("=" + k)) else a
            args.append(a)
        cases.append((label, args + list(extra), culprit, values))

    for name, template in COMMANDS.items():
        if "DATA" in template:
            for what, (path, culprit) in world["data"].items():
                if what == "label column missing" and "-l" not in template:
                    continue
                add(f"{name}: {what}", template, culprit, DATA=str(path))
        for slot in ("MODEL", "CLASSIFIER"):
            if slot in template:
                for what, (model, culprit) in world["models"].items():
                    add(f"{name}: {what}", template, culprit, **{slot: model})
        if "OUT" in template:
            add(f"{name}: output is a file", template, str(root / "a-file"), OUT=str(root / "a-file"))
            add(f"{name}: output under a file", template, str(root / "a-file"), OUT=str(root / "a-file" / "o"))
        if "CACHE" in template:
            add(f"{name}: cache is a file", template, str(root / "a-file"), CACHE=str(root / "a-file"))
        for option, value, culprit, commands in OPTIONS:
            if name in commands:
                extra = [option, value]
                if option == "--label":  # replace the label, not add a second one
                    tpl = [t for t in template]
                    if "-l" in tpl:
                        i = tpl.index("-l")
                        del tpl[i:i + 2]
                    add(f"{name}: {option} {value}", tpl, culprit, extra)
                else:
                    add(f"{name}: {option} {value}", template, culprit, extra)
        if name not in ("info", "profile", "extract"):
            add(f"{name}: bad --config", template, "bad.yaml", ["--config", str(root / "bad.yaml")])
    for key, culprit in RUN_KEYS:
        if culprit:
            add(f"run: {key}", RUN, culprit, [key])
    for what, (path, culprit) in world["data"].items():
        if what in ("missing folder", "label column missing"):
            add(f"run: {what}", RUN, culprit, DATA=str(path))
    add("run: out is a file", RUN, str(root / "a-file"), OUT=str(root / "a-file"))
    add("run: bad config file", ["run", str(root / "bad.yaml")], "bad.yaml")
    add("import-ct2: source missing", ["import-ct2", str(root / "no-ct2"), "OUT"], "no-ct2")
    add("import-ct2: out is a file", ["import-ct2", "tiny.en", "OUT"], str(root / "a-file"), OUT=str(root / "a-file"))
    add("demo: out is a file", ["demo", "--out", "OUT"], str(root / "a-file"), OUT=str(root / "a-file"))
    add("demo: bad speakers", ["demo", "--out", "OUT", "--speakers", "1"], "speakers")
    add("unknown command", ["frobnicate"], "frobnicate")
    add("prune layers: two methods", ["prune", "layers", "MODEL", "-o", "OUT", "--keep", "1", "--drop", "2"], "--drop")
    return cases


@pytest.mark.slow
def test_every_command_fails_cleanly_on_bad_input(world: dict) -> None:
    root = world["root"]
    watched = [root / "good", root / "cache", root / "out", root / "a-file", *(p for p, _ in world["data"].values())]
    failures = []
    cases = _cases(world)
    assert len(cases) > 100
    for label, args, culprit, _values in cases:
        before = snapshot(*watched)
        res = cli(*args)
        problems = []
        if res.code != 2:
            problems.append(f"exit code {res.code}")
        if "Traceback" in res.err or "Traceback" in res.out:
            problems.append("traceback")
        if len(res.error_lines) != 1:
            problems.append(f"{len(res.error_lines)} error lines")
        elif culprit.lower() not in res.error_lines[0].lower():
            problems.append(f"culprit {culprit!r} not named")
        if snapshot(*watched) != before:
            changed = sorted(set(before.items()) ^ set(snapshot(*watched).items()))[:3]
            problems.append(f"folders changed: {changed}")
        if problems:
            failures.append(f"{label}: {'; '.join(problems)} — {args} → {res.err.strip()[-300:]}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)

"""The README runs as written: every ``bash`` and ``python`` block is extracted and executed in order, in a
scratch copy of the repository layout, so a documented command that stops working fails CI.

What "as written" allows, and why (each rule below is the whole list; nothing else is changed):

* **Data**: ``../shared/data/{fsdd,emodb}`` resolve to small subsets of the real folders (same columns, same
  official split and speakers, fewer clips) built for the test, so every command sees the real format quickly.
* **Substitutions** (:data:`SUBSTITUTIONS`): the README's Whisper base becomes the real Whisper tiny.en under the
  same folder name (``models/whisper-base``), and training runs 1 epoch — the commands, flags and files are
  otherwise exactly the documented ones.
* **Not run** (:data:`NOT_RUN`): commands whose cost or environment a test cannot have, each with its reason
  and the test that covers it instead.

A ``yaml`` block whose first line is ``# NAME.yaml`` is written to ``NAME.yaml`` before any command runs (the
README may use the file before it shows it). ``test_a_broken_command_fails`` proves the harness notices a failure.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

#: (regular expression, replacement, why) applied to every command before it runs.
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"import-ct2 base models/whisper-base", "import-ct2 tiny.en models/whisper-base",
     "Whisper base is 4x slower than tiny.en in every later command; the folder name stays"),
    (r"(speechprune (?:finetune|prune structured)\b[^\n]*)", r"\1 --epochs 1",
     "one epoch is enough to show the command runs"),
    (r"(speechprune distill\b[^\n]*)", r"\1 --stage1-epochs 1 --stage2-epochs 1",
     "one epoch per stage is enough to show the command runs"),
    (r"(speechprune run \S+\.yaml)", r"\1 train.epochs=1 compress.structured.finetune_epochs=0 selection.cv=never",
     "one epoch is enough to show the command runs; the small data subsets leave < 30 validation clips, which would "
     "start the cross-validation fallback (5 more fine-tunes; the full EmoDB split has enough validation clips and "
     "does not) — the fallback is tested in tests/test_pipeline_discipline.py"),
]

#: Commands not run (matched at their start), with the reason and where they are covered instead.
NOT_RUN: dict[str, str] = {
    "make test": "this test is part of `make test` (CI runs it)",
    "make demo": "the demo runs in tests/test_cli.py::test_demo_runs_offline_end_to_end (fewer clips)",
    "speechprune demo": "as `make demo`",
    "accelerate launch": "multi-process runs are tested in tests/test_pipeline.py (2 CPU processes)",
    "source ": "the harness puts the venv's bin/ first on PATH itself",
    "pip install": "the test environment already has every extra installed",
}

TIMEOUT_S = 600


@dataclass
class Block:
    lang: str
    code: str
    line: int


def readme_blocks(text: str) -> list[Block]:
    """Fenced code blocks (```lang ... ```) in order, with the line they start on."""
    blocks, lang, buf, start = [], None, [], 0
    for i, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence and lang is None:
            lang, buf, start = fence.group(1) or "text", [], i
        elif fence:
            blocks.append(Block(lang, "\n".join(buf), start))
            lang = None
        elif lang is not None:
            buf.append(line)
    return blocks


def shell_commands(code: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    out, cur = [], ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if cur:
            cur += " " + line.strip()
        else:
            cur = line.strip()
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        cmd = re.sub(r"\s+#.*$", "", cur).strip() if not cur.startswith("#") else ""
        if cmd:
            out.append(cmd)
        cur = ""
    return out


def substitute(cmd: str) -> str:
    for pattern, repl, _why in SUBSTITUTIONS:
        cmd = re.sub(pattern, repl, cmd)
    return cmd


def skipped(cmd: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if cmd.startswith(start)), None)


def _subset(src: Path, dest: Path, keep) -> None:
    """An audiofolder with the rows ``keep(row)`` accepts, copied into the test's scratch folder (symbolic links
    out of a data folder are refused by the loaders, as they should be; nothing is copied into the repository)."""
    import csv

    with (src / "metadata.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if keep(r)]
        fields = reader.fieldnames
    dest.mkdir(parents=True)
    for r in rows:
        target = dest / r["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / r["file_name"], target)
    with (dest / "metadata.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    for extra in ("lablaut", "silb"):
        if (src / extra).is_dir():
            shutil.copytree(src / extra, dest / extra)


def make_workspace(root: Path) -> Path:
    """``root/repo`` (the working directory) beside ``root/shared/data`` with small real-data subsets."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    data = root / "shared" / "data"
    _subset(SHARED_DATA / "fsdd", data / "fsdd", lambda r: int(r["take"]) in (0, 1, 5, 6, 7) and
            r["speaker"] in ("george", "jackson", "lucas"))
    _subset(SHARED_DATA / "emodb", data / "emodb", lambda r: r["text_id"] in ("a01", "b01"))
    for name in ("librivox",):
        if (SHARED_DATA / name).exists():
            (data / name).symlink_to((SHARED_DATA / name).resolve())
    return repo


def run_readme(text: str, repo: Path, env: dict[str, str]) -> list[tuple[int, str, str]]:
    """Run every block of ``text`` in ``repo``; returns (line, command, status) rows; raises on a failure."""
    rows: list[tuple[int, str, str]] = []
    blocks = readme_blocks(text)
    for block in blocks:  # the files the README shows are written first: a command may precede its example file
        first = block.code.splitlines()[0] if block.code else ""
        name = re.match(r"#\s*(\S+\.ya?ml)\s*$", first) if block.lang == "yaml" else None
        if name:
            (repo / name.group(1)).write_text(block.code + "\n")
            rows.append((block.line, f"write {name.group(1)}", "written"))
    for block in blocks:
        if block.lang in ("bash", "sh", "shell", "console"):
            jobs = [(cmd, substitute(cmd)) for cmd in shell_commands(block.code)]
            runner = lambda c: ["bash", "-euo", "pipefail", "-c", c]  # noqa: E731
        elif block.lang == "python":
            jobs = [(block.code, substitute(block.code))]
            runner = lambda c: [sys.executable, "-c", c]  # noqa: E731
        else:
            continue
        for shown, cmd in jobs:
            why = skipped(shown)
            if why:
                rows.append((block.line, shown, f"not run: {why}"))
                continue
            proc = subprocess.run(runner(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
            if proc.returncode != 0:
                raise AssertionError(
                    f"README line {block.line}: `{shown}` failed (exit {proc.returncode}) as run: `{cmd}`\n"
                    f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
            rows.append((block.line, shown, "ok"))
    return rows


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SPEECHPRUNE_CACHE"] = str(root / "cache")
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.real_weights
def test_every_readme_block_runs_as_written(tmp_path: Path, shared_data: Path) -> None:
    repo = make_workspace(tmp_path)
    rows = run_readme((REPO / "README.md").read_text(), repo, _env(tmp_path))
    ran = [r for r in rows if r[2] == "ok"]
    assert len(ran) >= 10, rows  # the README documents at least this many commands
    print("\n".join(f"README:{line}: {status}: {cmd[:100]}" for line, cmd, status in rows))


def test_a_broken_command_fails(tmp_path: Path) -> None:
    """The harness is not a test that cannot fail: a documented command with a wrong flag makes it fail."""
    readme = "# t\n\n```bash\nspeechprune --help\nspeechprune info tiny:wavlm --no-such-flag\n```\n"
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(AssertionError, match=r"README line 3: `speechprune info tiny:wavlm --no-such-flag` failed"):
        run_readme(readme, repo, _env(tmp_path))
    rows = run_readme("```bash\nspeechprune --help  # fine\nmake demo\n```\n", repo, _env(tmp_path))
    assert [r[2] for r in rows] == ["ok", f"not run: {NOT_RUN['make demo']}"]


def test_block_parsing() -> None:
    code = "# comment\nspeechprune a b \\\n    --c d   # note\n\nspeechprune e\n"
    assert shell_commands(code) == ["speechprune a b --c d", "speechprune e"]
    assert substitute("speechprune import-ct2 base models/whisper-base") == \
        "speechprune import-ct2 tiny.en models/whisper-base"
    assert [b.lang for b in readme_blocks("```bash\nx\n```\ntext\n```python\ny\n```\n")] == ["bash", "python"]


if __name__ == "__main__":  # pragma: no cover - run by hand: python tests/test_readme.py /tmp/readme-check
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/readme-check")
    shutil.rmtree(root, ignore_errors=True)
    for row in run_readme((REPO / "README.md").read_text(), make_workspace(root), _env(root)):
        print(*row, sep="  ")
    print(shlex.join(sys.argv))

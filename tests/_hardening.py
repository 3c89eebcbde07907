"""Helpers of the hardening tests (issue 15): tiny audiofolders and an in-process CLI call that goes through the
real entry point (one-line errors, exit codes) and reports what it printed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


def audiofolder(folder: Path, n: int = 8, seconds: float = 0.5, labels=None, extra_rows: str = "",
                columns: str = "file_name,word,speaker") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = [columns]
    for i in range(n):
        sf.write(folder / f"c{i}.wav", (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        word = labels[i] if labels is not None else f"w{i % 2}"
        rows.append(f"c{i}.wav,{word},s{i % 4}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n" + extra_rows)
    return folder


@dataclass
class Result:
    code: int
    err: str
    out: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def cli(*args: str) -> Result:
    """Run ``speechprune ARGS`` in this process through the console entry point's error handling."""
    from speechprune.cli.app import app
    from speechprune.cli.guard import run

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run(app, [str(a) for a in args])
    return Result(code, err.getvalue(), out.getvalue())


def snapshot(*folders: Path) -> dict[str, str]:
    """Path → content hash (or '<dir>') of everything under ``folders``, to prove that nothing changed."""
    out: dict[str, str] = {}
    for folder in folders:
        if not folder.exists():
            out[str(folder)] = "<absent>"
            continue
        for root, dirs, files in os.walk(folder):
            out[root] = "<dir>"
            for f in files:
                p = Path(root) / f
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out

"""Run as a script with ``python -I``: load model folders with plain transformers only (speechprune made
unimportable first), classify a wav with ``pipeline("audio-classification")`` and print the logits as JSON.

Usage: python -I plain_transformers_check.py WAV FOLDER[:remote] ...   (``:remote`` = trust_remote_code=True)
"""

import importlib.abc
import json
import os
import sys
import traceback

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class _NoSpeechprune(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "speechprune" or name.startswith("speechprune."):
            raise ImportError(f"{name} is blocked: this check runs with plain transformers only")
        return None


sys.meta_path.insert(0, _NoSpeechprune())
try:
    import speechprune  # noqa: F401
except ImportError:
    pass
else:  # pragma: no cover - the blocker failed
    raise SystemExit("speechprune is importable: the check would not prove anything")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline  # noqa: E402

torch.set_num_threads(1)
wave, sr = sf.read(sys.argv[1], dtype="float32")


def classify(folder: str, remote: bool) -> dict:
    fe = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=remote)
    model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=remote).eval()
    inputs = fe(wave, sampling_rate=sr, return_tensors="pt")
    if "attention_mask" in inputs and "input_values" not in inputs:
        inputs.pop("attention_mask")
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    clf = pipeline("audio-classification", model=folder, trust_remote_code=remote, top_k=None)
    top = clf({"raw": np.asarray(wave), "sampling_rate": sr})
    return {"logits": logits.tolist(), "pipeline_top": top[0]["label"], "class": type(model).__name__,
            "fe": type(fe).__name__, "fe_n_samples": getattr(fe, "n_samples", None)}


results = {}
for arg in sys.argv[2:]:
    folder, _, flag = arg.partition(":")
    remote = flag == "remote"
    try:
        results[folder] = classify(folder, remote)
    except Exception:  # report every folder, not just the first failure
        results[folder] = {"error": traceback.format_exc()}
print("RESULT " + json.dumps(results))

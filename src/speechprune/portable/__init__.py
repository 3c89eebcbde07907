"""Model folders that leave speechprune: what plain ``transformers`` needs to load every folder speechprune writes.

* Stock shapes save as stock transformers folders (nothing here is needed).
* Shapes a stock config cannot describe carry their modeling code in Hugging Face custom-code form: the standalone
  files of this package (they import only torch and transformers) are copied into the folder and ``config.json``
  gains an ``auto_map``, so ``from_pretrained(folder, trust_remote_code=True)`` and ``pipeline(...,
  trust_remote_code=True)`` work without speechprune:

  - :mod:`.modeling_speechprune_pruned` — structured-pruned models (per-layer heads / FFN sizes / Whisper conv1);
  - :mod:`.modeling_speechprune_student` + :mod:`.configuration_speechprune_student` — distilled students;
  - :mod:`.feature_extraction_speechprune_whisper` — Whisper windows that are not whole seconds.

speechprune's own loaders never execute the copied files: they build the same classes from this package.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PRUNED_MODULE = "modeling_speechprune_pruned"
STUDENT_MODULES = ("configuration_speechprune_student", "modeling_speechprune_student")
WHISPER_FE_MODULE = "feature_extraction_speechprune_whisper"

#: The auto class that loads an architecture (by class-name suffix; the first match wins).
_AUTO_BY_SUFFIX = (
    ("ForSequenceClassification", "AutoModelForAudioClassification"),
    ("ForAudioClassification", "AutoModelForAudioClassification"),
    ("ForAudioFrameClassification", "AutoModelForAudioFrameClassification"),
    ("ForCTC", "AutoModelForCTC"),
    ("ForConditionalGeneration", "AutoModelForSpeechSeq2Seq"),
    ("Model", "AutoModel"),
    ("Encoder", "AutoModel"),
)


def auto_class_for(architecture: str) -> str:
    for suffix, auto in _AUTO_BY_SUFFIX:
        if architecture.endswith(suffix):
            return auto
    return "AutoModel"


def copy_modules(folder: str | Path, modules: tuple[str, ...] | list[str]) -> None:
    """Copy the standalone files ``modules`` (names without ``.py``) of this package into ``folder``."""
    for name in modules:
        shutil.copyfile(HERE / f"{name}.py", Path(folder) / f"{name}.py")


def add_auto_map(json_file: str | Path, auto_map: dict[str, str]) -> None:
    """Merge ``auto_map`` into a saved ``config.json`` / ``preprocessor_config.json``."""
    path = Path(json_file)
    data = json.loads(path.read_text())
    data["auto_map"] = {**data.get("auto_map", {}), **auto_map}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_pruned_portable(folder: str | Path) -> None:
    """Give a saved structured-pruned folder (config with ``speechprune_structure``) its custom code."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    arch = (config.get("architectures") or ["WhisperForAudioClassification"])[0]
    copy_modules(folder, [PRUNED_MODULE])
    add_auto_map(folder / "config.json", {auto_class_for(arch): f"{PRUNED_MODULE}.{arch}"})


def write_student_config(folder: str | Path, student: dict[str, Any]) -> None:
    """Write ``config.json`` (+ the two custom-code files) for a distilled student saved in speechprune format."""
    from speechprune.portable.configuration_speechprune_student import SpeechpruneStudentConfig

    classes = list(student["classes"])
    config = SpeechpruneStudentConfig(
        student=student, id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
        architectures=["SpeechpruneStudentForAudioClassification"],
    )
    config.save_pretrained(folder)
    copy_modules(folder, STUDENT_MODULES)
    model = f"{STUDENT_MODULES[1]}.SpeechpruneStudentForAudioClassification"
    add_auto_map(Path(folder) / "config.json", {
        "AutoConfig": f"{STUDENT_MODULES[0]}.SpeechpruneStudentConfig",
        "AutoModel": model,
        "AutoModelForAudioClassification": model,
    })


def make_feature_extractor_portable(folder: str | Path) -> None:
    """Point a saved ``preprocessor_config.json`` of a non-whole-second Whisper window at its custom class."""
    copy_modules(folder, [WHISPER_FE_MODULE])
    add_auto_map(Path(folder) / "preprocessor_config.json",
                 {"AutoFeatureExtractor": f"{WHISPER_FE_MODULE}.WindowedWhisperFeatureExtractor"})

"""Config of a speechprune distilled student in Hugging Face custom-code form (needs only transformers).

The whole student description (``speechprune_student.json``: the teacher's config for the front end, the mimicker
spec, the classes) is kept in one attribute, ``student``, so that the folder's two readers — speechprune's own
``load_student`` and transformers' ``trust_remote_code`` loader — read the same facts.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class SpeechpruneStudentConfig(PretrainedConfig):
    model_type = "speechprune_student"

    def __init__(self, student: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.student = dict(student or {})
        super().__init__(**kwargs)

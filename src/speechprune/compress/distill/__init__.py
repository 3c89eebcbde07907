"""Distillation: replace the whole transformer stack with small mimicking layers (docs/methods.md §2c, issue 5).

API::

    from speechprune.compress.distill import DistillConfig, distill, load_student
    summary = distill(teacher, dataset, "word", "students/mlp64", DistillConfig(mimicker="mlp", hidden=64, blocks=2))
    student = load_student("students/mlp64")
    logits = student.predict(waveforms)

See :mod:`.student` (where the student starts, what it targets), :mod:`.mimickers`, :mod:`.train` (two stages),
:mod:`.targets` (the cached teacher pass), :mod:`.export` (file formats) and :mod:`.evaluate` (metrics, MAC
cross-check, back-to-back latency).
"""

from speechprune.compress.distill.export import load_student, save_student, stock_expressible, to_stock
from speechprune.compress.distill.mimickers import KINDS, Mimicker, MimickerSpec, mimicker_macs
from speechprune.compress.distill.student import StudentClassifier, build_student, student_config
from speechprune.compress.distill.targets import TeacherTargets, teacher_targets
from speechprune.compress.distill.train import DistillConfig, distill, student_cost

__all__ = [
    "KINDS", "DistillConfig", "Mimicker", "MimickerSpec", "StudentClassifier", "TeacherTargets", "build_student",
    "distill", "load_student", "mimicker_macs", "save_student", "stock_expressible", "student_config", "student_cost",
    "teacher_targets", "to_stock",
]

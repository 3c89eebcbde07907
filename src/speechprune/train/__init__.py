"""Training and evaluation shared by every compression: the accelerate-based loop, fine-tuning, evaluation."""

from speechprune.train.loop import TrainConfig, Trainer
from speechprune.train.splits import SplitSpec, make_splits

__all__ = ["SplitSpec", "TrainConfig", "Trainer", "make_splits"]

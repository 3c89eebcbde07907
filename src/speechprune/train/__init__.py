"""Training and evaluation shared by every compression: the accelerate-based loop, fine-tuning, evaluation."""

from speechprune.train.loop import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer"]

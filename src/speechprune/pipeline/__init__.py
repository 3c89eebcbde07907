"""``speechprune run``: the whole pipeline from audio to a smaller model and a report, resumable stage by stage."""

from speechprune.pipeline.config import RunConfig, load_run_config
from speechprune.pipeline.runner import run_pipeline

__all__ = ["RunConfig", "load_run_config", "run_pipeline"]

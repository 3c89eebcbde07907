"""Truncation by convexity: keep layers 1..k of the pretrained model, k = the state of highest graph convexity for
the label (within ``tolerance`` points of the best: the shallowest), and fine-tune it like the baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from speechprune.compress.base import Candidate, Compression, Task, Teacher, Workspace, finetune_candidate


@dataclass
class TruncateOptions:
    """``compress.truncate`` of ``speechprune run``."""

    enabled: bool = True
    #: Take the shallowest layer within this many convexity points of the best.
    tolerance: float = 0.0


class Truncation(Compression):
    name = "truncate"
    options = TruncateOptions
    pool_choice = ("convexity depth (truncation): convexity of the pretrained model's features for the label; no "
                   "model is fitted, no held-out clips needed")
    inputs = ("data", "train", "analysis")
    trains = True

    def validate(self, options: TruncateOptions) -> None:
        from speechprune.utils.checks import check_finite

        check_finite(options.tolerance, "tolerance", low=0.0)

    def run(self, teacher: Teacher, task: Task, out: Workspace, train: Any, options: TruncateOptions
            ) -> list[Candidate]:
        from speechprune.compress.layers import choose_depth

        scores = (teacher.analysis or {}).get("convexity") or pretrained_convexity(teacher, task, out)
        choice = choose_depth({int(k): v for k, v in scores.items()}, options.tolerance)
        out.details["choice"] = choice.to_dict()
        enc = teacher.pretrained()
        if choice.depth >= enc.num_layers:
            out.details["note"] = (f"convexity peaks at the last layer ({choice.depth}): "
                                   "truncation keeps the whole model")
            return []
        return finetune_candidate(enc.keep_layers(choice.depth), task, out, train, f"truncate-k{choice.depth}",
                                  f"convexity truncation (k = {choice.depth})", self.name, depth=choice.depth)


def pretrained_convexity(teacher: Teacher, task: Task, out: Workspace) -> dict[str, float]:
    """Convexity per state of the pretrained model's mean-pooled features (when the analysis stage did not run), on
    the training + validation clips only: the depth is a choice, and choices never read test labels."""
    from speechprune.analysis.convexity import convexity_by_layer
    from speechprune.features.extract import extract_features
    from speechprune.utils.distributed import main_process_first

    with main_process_first():  # in a multi-process run the main process fills the feature cache, the others read it
        feats = extract_features(teacher.pretrained(), task.selection_pool(), pooling="mean",
                                 batch_size=out.batch_size, device=str(out.torch_device()), progress=out.progress)
    return {str(r["state"]): r["score"] for r in convexity_by_layer(feats, task.label)}

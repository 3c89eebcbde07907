"""How far a shortened Whisper window moves the representations.

Whisper was trained on 30 s windows only. Encoding a short clip in a short window (positional table sliced) is
~14× cheaper for 1–3 s clips but changes every state after the first attention layer, because the model now
attends over fewer (padding) frames. Before an analysis or a pruned model relies on the short window, measure how
much each state moved against the full window on the user's own clips.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from speechprune.errors import SpeechpruneError
from speechprune.models.adapter import SpeechEncoder


def window_drift(
    encoder: SpeechEncoder, waveforms: Sequence[np.ndarray], window_seconds: float, batch_size: int = 4
) -> list[dict[str, float]]:
    """Per state: mean cosine between full- and short-window states over valid frames, the cosine of the
    clip means, and the relative L2 error of the clip means. Clips must fit in the short window."""
    if not encoder.has_fixed_window:
        raise SpeechpruneError("window drift applies to Whisper encoders only")
    short = encoder.with_window(window_seconds)  # type: ignore[attr-defined]
    too_long = [i for i, w in enumerate(waveforms) if len(w) > window_seconds * 16_000]
    if too_long:
        raise SpeechpruneError(f"clips {too_long} are longer than the {window_seconds} s window")
    sums = np.zeros((encoder.num_states, 3))
    frames_total, clips_total = 0, 0
    for start in range(0, len(waveforms), batch_size):
        chunk = list(waveforms[start : start + batch_size])
        inputs = encoder.prepare(chunk)
        full = encoder.hidden_states(inputs)
        part = short.hidden_states(short.prepare(chunk))
        for b, n in enumerate(inputs.frame_lengths.tolist()):
            for s in range(encoder.num_states):
                a, c = full[s][b, :n], part[s][b, :n]
                sums[s, 0] += torch.nn.functional.cosine_similarity(a, c, dim=-1).sum().item()
                ma, mc = a.mean(0), c.mean(0)
                sums[s, 1] += torch.nn.functional.cosine_similarity(ma, mc, dim=0).item()
                sums[s, 2] += (torch.linalg.vector_norm(ma - mc) / torch.linalg.vector_norm(ma)).item()
            frames_total += n
            clips_total += 1
    return [
        {
            "state": s,
            "frame_cosine": sums[s, 0] / frames_total,
            "pooled_cosine": sums[s, 1] / clips_total,
            "pooled_relative_l2": sums[s, 2] / clips_total,
        }
        for s in range(encoder.num_states)
    ]

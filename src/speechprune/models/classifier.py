"""The standard audio-classification head on any supported encoder, as a stock transformers class.

Every family gets transformers' own ``*ForSequenceClassification`` (wav2vec 2.0, HuBERT, WavLM, data2vec-audio) or
``WhisperForAudioClassification``: a ``projector`` Linear(D → 256), mean pooling over frames and a ``classifier``
Linear(256 → C). Using the stock classes is what makes a fine-tuned or pruned model load with plain
``AutoModelForAudioClassification.from_pretrained`` and run in any tool that knows transformers.

Pooling:

* wav2vec2 family — over **valid frames**: :func:`classifier_inputs` always passes the attention mask, so the head
  averages only the frames that hold speech (and the encoder does not attend to padding). A user calling the saved
  model directly should pass ``attention_mask`` too (the saved feature extractor is set to return it).
* Whisper — the stock class averages over the whole encoder window, padding included (Whisper pads every input to
  its window and was trained that way). With a short window (``--window``) almost all frames are speech. The
  window is part of the saved config (``max_source_positions``), so the reloaded model expects inputs padded to
  that window: :func:`speechprune.models.load_encoder` does this for you.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn

from speechprune.errors import SpeechpruneError
from speechprune.models.adapter import SpeechEncoder
from speechprune.models.registry import family_for

PROJECTOR_SIZE = 256


def is_classifier(encoder: SpeechEncoder) -> bool:
    """Whether the wrapped model carries an audio-classification head."""
    return hasattr(encoder.model, "classifier") and hasattr(encoder.model, "projector")


def class_names(encoder: SpeechEncoder) -> list[str]:
    """The head's class names in logit order (``config.id2label``)."""
    if not is_classifier(encoder):
        raise SpeechpruneError(
            f"this {encoder.family} model has no classification head; fine-tune it first (`speechprune finetune`)"
        )
    id2label = encoder.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


def add_classification_head(
    encoder: SpeechEncoder, labels: Sequence[str], *, projector_size: int = PROJECTOR_SIZE, seed: int = 0
) -> SpeechEncoder:
    """A copy of ``encoder`` as the family's stock classification model for ``labels``, with a fresh head.

    The encoder weights (front end + transformer, including any layer surgery and Whisper window) are copied
    exactly; the head is initialised from ``seed``. A model that already has a head gets a new one.
    """
    from speechprune.models.loading import wrap_model

    labels = [str(x) for x in labels]
    if len(labels) < 2:
        raise SpeechpruneError(f"a classifier needs at least 2 classes, got {labels}")
    if len(set(labels)) != len(labels):
        raise SpeechpruneError("class names must be unique")
    fam = family_for(encoder.family)
    cls = getattr(transformers, fam.classifier_class(encoder.family))
    config = copy.deepcopy(encoder.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.classifier_proj_size = projector_size
    config.use_weighted_layer_sum = False
    config.architectures = [cls.__name__]
    fam.classifier_config(config)
    torch.manual_seed(seed)
    model = cls(config)
    body = fam.resolve(model).base
    missing, unexpected = body.load_state_dict(encoder.encoder_module.state_dict(), strict=False)
    bad = [k for k in missing if "masked_spec_embed" not in k]
    if bad or unexpected:
        raise SpeechpruneError(f"encoder weights do not fit the classification model: missing {bad}, unexpected {unexpected}")
    fe = fam.classifier_feature_extractor(encoder, copy.deepcopy(encoder.feature_extractor))
    new = wrap_model(model.eval(), fe, source=encoder.source)
    new.kept_layers = encoder.kept_layers
    return new


def classifier_inputs(encoder: SpeechEncoder, waveforms: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """Model keyword arguments for a batch: always with the attention mask for the wav2vec2 family, so that the
    head pools over valid frames."""
    prepared = encoder.prepare(waveforms)
    kwargs = dict(prepared.model_kwargs)
    if "input_values" in kwargs and "attention_mask" not in kwargs:
        lengths = prepared.sample_lengths
        width = kwargs["input_values"].shape[1]
        kwargs["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return kwargs


def classifier_logits(model: nn.Module, kwargs: dict[str, Any]) -> torch.Tensor:
    """Logits of a stock classification model for prepared keyword arguments."""
    return model(**kwargs).logits

"""Labels are attached to cached features at load time, from the data as they are *now*.

A feature cache entry is keyed by what changes the numbers: the model, the audio (and, for segment pooling, the
segments, which decide the rows) and the extraction options. Labels and groups do not change the numbers, so they
are not stored as part of the identity: every load re-attaches them from the current metadata through the entry's
``item_index`` (row → clip). Relabelling clips, or analysing another label column of the same audio, therefore
uses the new labels at once, without re-extracting — where the labels recorded at extraction time were returned
before (old probes after a relabelling, "no label column" for a second label). The returned ``meta`` records a
fingerprint of the labels that were attached (``labels_fingerprint``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from speechprune.errors import CacheError
from speechprune.utils.fingerprint import hash_json


def labels_fingerprint(dataset: Any) -> str:
    return hash_json({"columns": list(dataset.label_columns), "group": dataset.group_column,
                      "labels": [[it.labels.get(c) for c in dataset.label_columns] for it in dataset.items],
                      "groups": [it.group for it in dataset.items]})


def attach_labels(feats: Any, dataset: Any) -> Any:
    """``feats`` with labels and groups taken from ``dataset`` (the data the features were extracted from)."""
    if feats is None:
        return None
    keys = feats.meta.get("item_keys")
    index = [int(i) for i in feats.item_index]
    if index and max(index) >= len(dataset):
        raise CacheError(f"{feats.path}: cache entry has rows of clip {max(index)} but the data have {len(dataset)}")
    if keys is not None and any(dataset.items[i].key != k for i, k in zip(index, keys)):
        raise CacheError(f"{feats.path}: cache entry was made for other clips than these data (item keys differ); "
                         "delete the entry to re-extract")
    labels = {c: [dataset.items[i].labels[c] for i in index] for c in dataset.label_columns}
    if "segment" in feats.labels and "segment" not in labels:  # segment pooling: the segments' own labels
        labels["segment"] = list(feats.labels["segment"])
    groups = [dataset.items[i].group for i in index]
    meta = {**feats.meta, "labels": labels, "groups": groups, "group_column": dataset.group_column,
            "labels_fingerprint": labels_fingerprint(dataset)}
    return dataclasses.replace(feats, labels=labels, groups=groups, meta=meta)

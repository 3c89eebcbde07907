"""Layer features: one forward pass per batch, pooled (padding-aware mean, mean over all frames, segments,
frames) and cached on disk by model + data + options fingerprints."""

from speechprune.features.extract import default_cache_root, extract_features
from speechprune.features.pooling import POOLINGS, pool_states
from speechprune.features.store import LayerFeatures, load_features

__all__ = ["POOLINGS", "LayerFeatures", "default_cache_root", "extract_features", "load_features", "pool_states"]

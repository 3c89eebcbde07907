"""Layer analysis on cached features: similarity between layers (cosine, linear CKA, mutual kNN), graph
convexity of class regions, linear probes, block structure, and chance baselines for each."""

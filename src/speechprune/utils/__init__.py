"""Small shared helpers: atomic file writes and content fingerprints."""

"""Importers: foreign weight formats turned into Hugging Face folders that :mod:`speechprune.models` loads (today:
CTranslate2 Whisper checkpoints, :mod:`speechprune.importers.ct2`)."""

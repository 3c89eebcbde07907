"""Exception types. Every user-facing failure raises a subclass of :class:`SpeechpruneError` with a message that
names the offending file, column, key or index, so the CLI can print it without a traceback."""

from __future__ import annotations


class SpeechpruneError(Exception):
    """Base class: an error caused by the user's input or environment, reported without a traceback."""


class AudioError(SpeechpruneError):
    """Audio that cannot be used: unreadable, empty, zero-length, non-finite samples."""


class DataError(SpeechpruneError):
    """A data source problem: missing folder or manifest, missing column, bad label, bad segment file."""


class UnsupportedModelError(SpeechpruneError):
    """A model family (``config.model_type``) that speechprune does not support."""


class LayerIndexError(SpeechpruneError, IndexError):
    """A layer index outside the model's range under the documented index convention."""


class ConversionError(SpeechpruneError):
    """A checkpoint that cannot be converted (e.g. a malformed CTranslate2 ``model.bin``)."""


class CacheError(SpeechpruneError):
    """A feature cache that is inconsistent with the request (e.g. written by different options)."""


class SpeechpruneWarning(UserWarning):
    """Something the user should know that is not an error (the CLI prints it as one ``warning:`` line)."""


class ConfigError(SpeechpruneError):
    """A bad ``run`` configuration (unknown key, wrong type, missing path or label)."""

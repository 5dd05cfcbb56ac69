"""GGUF header reader: the architecture a model file declares, read from its first bytes only."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

ARCHITECTURE_KEY = "general.architecture"
_MAGIC = b"GGUF"
_STRING = 8
_ARRAY = 9
# Fixed-size value types by GGUF type id: struct format (little-endian).
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
# general.architecture comes first in files written by llama.cpp's tools; these bounds only stop
# a damaged or unusual file from being read in full (tokenizer arrays run to megabytes).
_MAX_KEYS = 64
_MAX_STRING = 1 << 20


class GgufError(ValueError):
    """The file is not a GGUF model, or its header does not name an architecture."""


class _Reader:
    def __init__(self, stream: BinaryIO, v1: bool) -> None:
        self._stream = stream
        self._v1 = v1

    def read(self, size: int) -> bytes:
        data = self._stream.read(size)
        if len(data) != size:
            raise GgufError("the file ends inside its header")
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]
        return value

    def count(self) -> int:
        # GGUF v1 wrote lengths and counts as 32-bit, later versions as 64-bit.
        return int(self.unpack("<I" if self._v1 else "<Q"))

    def string(self) -> str:
        size = self.count()
        if size > _MAX_STRING:
            raise GgufError(f"a header string claims {size} bytes")
        return self.read(size).decode("utf-8", errors="replace")

    def skip_value(self, kind: int) -> None:
        if kind == _STRING:
            self.string()
        elif kind == _ARRAY:
            item = int(self.unpack("<I"))
            for _ in range(self.count()):
                self.skip_value(item)
        elif kind in _SCALARS:
            self.read(struct.calcsize(_SCALARS[kind]))
        else:
            raise GgufError(f"unknown GGUF value type {kind}")


def read_architecture(stream: BinaryIO) -> str:
    """The general.architecture of the GGUF header at the start of stream (e.g. "llama")."""
    if stream.read(4) != _MAGIC:
        raise GgufError("not a GGUF file (no GGUF magic)")
    (version,) = struct.unpack("<I", stream.read(4).ljust(4, b"\0"))
    if not 1 <= version <= 3:
        raise GgufError(f"unsupported GGUF version {version} (big-endian or newer than 3)")
    reader = _Reader(stream, v1=version == 1)
    reader.count()  # tensors
    keys = reader.count()
    for _ in range(min(keys, _MAX_KEYS)):
        key = reader.string()
        kind = int(reader.unpack("<I"))
        if key == ARCHITECTURE_KEY and kind == _STRING:
            return reader.string()
        reader.skip_value(kind)
    raise GgufError(f"no {ARCHITECTURE_KEY} among the first {min(keys, _MAX_KEYS)} header keys")


def gguf_architecture(path: Path) -> str:
    """The architecture path's GGUF header declares; GgufError saying why when it cannot."""
    try:
        with path.open("rb") as stream:
            return read_architecture(stream)
    except OSError as exc:
        raise GgufError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except GgufError as exc:
        raise GgufError(f"{path}: {exc}") from exc

"""Builds GGUF headers byte by byte for tests (the layout of the GGUF spec, little-endian)."""

from __future__ import annotations

import struct
from pathlib import Path

STRING, ARRAY, UINT32 = 8, 9, 4


def gguf_string(text: str, v1: bool = False) -> bytes:
    data = text.encode()
    return struct.pack("<I" if v1 else "<Q", len(data)) + data


def gguf_header(*kvs: bytes, version: int = 3, tensors: int = 0) -> bytes:
    count = "<I" if version == 1 else "<Q"
    head = b"GGUF" + struct.pack("<I", version) + struct.pack(count, tensors)
    return head + struct.pack(count, len(kvs)) + b"".join(kvs)


def kv_string(key: str, value: str, v1: bool = False) -> bytes:
    return gguf_string(key, v1) + struct.pack("<I", STRING) + gguf_string(value, v1)


def kv_uint32(key: str, value: int) -> bytes:
    return gguf_string(key) + struct.pack("<I", UINT32) + struct.pack("<I", value)


def kv_strings(key: str, values: list[str]) -> bytes:
    items = b"".join(gguf_string(v) for v in values)
    return gguf_string(key) + struct.pack("<IIQ", ARRAY, STRING, len(values)) + items


def write_gguf(path: Path, architecture: str = "llama") -> Path:
    """A file whose header names architecture, as llama.cpp's converters write it (first key)."""
    path.write_bytes(
        gguf_header(kv_string("general.architecture", architecture), kv_uint32("x.n", 1))
        + b"\0" * 64
    )
    return path

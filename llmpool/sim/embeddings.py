"""Deterministic unit-length embedding vectors from a hash of each input."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct


def embed(text: str, dim: int) -> list[float]:
    """A unit vector of `dim` floats that depends only on the text."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    rng = random.Random(seed)
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def to_base64(vector: list[float]) -> str:
    """OpenAI's encoding_format=base64: little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

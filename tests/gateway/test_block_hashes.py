"""BlockHasher: the memo of shared prefixes never changes a hash, and stays bounded."""

from __future__ import annotations

import random

from xxhash import xxh3_64_intdigest

from gateway.policies.block_hashes import MEMO_MIN_BLOCKS, MEMO_PREFIXES, BlockHasher, BlockLayout
from gateway.policies.prefix_index import PrefixIndex


def _plain(layout: BlockLayout, data: bytes) -> list[int]:
    h = 0
    return [
        (h := xxh3_64_intdigest(data[a:b], h)) for a, b in layout.spans[: layout.count(len(data))]
    ]


def test_memoized_hashes_are_the_plain_chain_for_prompts_that_share_and_part() -> None:
    """Prompts under a few shared stems, some changed inside the stem after the memo learned
    it (a document edited, a chat under one system prompt): every prompt's hashes are the
    block-by-block chain, whatever the memo holds."""
    rng = random.Random(3)
    index = PrefixIndex(block_chars=8, max_blocks=4000, max_prompt_blocks=60, max_holders=4)
    layout = index.layout
    stems = [bytes(rng.choices(b"abcdef", k=rng.randint(40, 600))) for _ in range(5)]
    learned = 0
    for i in range(2000):
        stem = bytearray(rng.choice(stems))
        if rng.random() < 0.2:
            stem[rng.randrange(len(stem))] = ord("z")  # parts from the others inside the stem
        data = bytes(stem) + bytes(rng.choices(b"xyz", k=rng.randint(0, 300)))
        match = index.match(data)
        assert match.hashes == _plain(layout, data)
        index.insert(f"m{i % 4}", match)
        learned += bool(index.hasher._memo or index.hasher._older)
    assert learned  # the memo was in play


def test_the_memo_keeps_what_a_group_shares_and_hashes_the_rest() -> None:
    layout = BlockLayout(8, 64)
    hasher = BlockHasher(layout.spans)
    doc = b"0123456789abcdef" * 40  # 640 bytes: well past MEMO_MIN_BLOCKS blocks
    a, b = doc + b"question one " * 4, doc + b"question two " * 4
    hashes_a = hasher.hashes(a, layout.count(len(a)))
    shared = layout.count(len(doc))
    assert shared >= MEMO_MIN_BLOCKS
    hasher.learn(a, hashes_a, shared)
    assert hasher.hashes(b, layout.count(len(b))) == _plain(layout, b)
    # A prompt of the group that parts inside the memo: hashed in full, and the memo shrinks
    # to what the two share, for good.
    edited = doc[:200] + b"!" + doc[201:] + b"question three"
    hashes_e = hasher.hashes(edited, layout.count(len(edited)))
    assert hashes_e == _plain(layout, edited)
    hasher.learn(edited, hashes_e, shared)
    memo = hasher._memo[hashes_a[0]]
    assert memo.fixed and memo.hashes == hashes_a[: layout.count(200)]
    hasher.learn(a, hashes_a, shared)
    assert hasher._memo[hashes_a[0]].hashes == hashes_a[: layout.count(200)]


def test_the_memo_is_bounded() -> None:
    layout = BlockLayout(8, 64)
    hasher = BlockHasher(layout.spans)
    for i in range(5 * MEMO_PREFIXES):
        data = f"{i:08d}".encode() * 20
        count = layout.count(len(data))
        hasher.learn(data, hasher.hashes(data, count), count)
    assert len(hasher._memo) + len(hasher._older) <= MEMO_PREFIXES

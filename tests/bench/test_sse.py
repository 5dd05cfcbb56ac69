"""SSE accounting: chunked decoding, event counting, gaps and one-for-one detection."""

import asyncio

import pytest

from bench.mock_upstream import sse_events
from bench.sse import ChunkedDecoder, EventCounter, analyze_stream


def _encode(parts: list[bytes]) -> bytes:
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def test_chunked_decoder_byte_by_byte() -> None:
    raw = _encode([b"data: a\n\n", b"data: [DONE]\n\n"])
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(raw[i : i + 1]) for i in range(len(raw)))
    assert out == b"data: a\n\ndata: [DONE]\n\n"
    assert decoder.done


def test_chunked_decoder_ignores_extensions_and_waits_for_more() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"5;ext=1\r\nhel") == b"hel"
    assert decoder.feed(b"lo\r") == b"lo"
    assert not decoder.done
    assert decoder.feed(b"\n0\r\n\r\n") == b""
    assert decoder.done


def test_mock_stream_decodes_to_chunks_plus_done() -> None:
    body = ChunkedDecoder().feed(b"".join(sse_events(20, usage=True)))
    counter = EventCounter()
    assert counter.feed(body) == 22  # 20 deltas, usage, [DONE]
    assert counter.done_seen


def test_event_counter_across_reads_and_crlf() -> None:
    counter = EventCounter()
    assert counter.feed(b'data: {"a":') == 0
    assert counter.feed(b" 1}\r\n\r\ndata: x\n") == 1
    assert counter.feed(b"\ndata: [DONE]\n\n") == 2
    assert counter.total == 3
    assert counter.done_seen


def test_analyze_one_for_one_stream() -> None:
    arrivals = [(1.0 + 0.01 * i, 1) for i in range(21)]
    stats = analyze_stream(0.998, arrivals, done=True)
    assert stats.ttft_s == pytest.approx(0.002)
    assert stats.events == 21
    assert stats.reads_with_events == 21
    assert stats.max_events_per_read == 1
    assert len(stats.gaps_s) == 20
    assert max(stats.gaps_s) == pytest.approx(0.01)


def test_analyze_buffered_stream_shows_one_read() -> None:
    stats = analyze_stream(0.0, [(0.2, 0), (0.21, 21)], done=True)
    assert stats.ttft_s == pytest.approx(0.21)
    assert stats.reads_with_events == 1
    assert stats.max_events_per_read == 21
    assert stats.gaps_s == [0.0] * 20


def test_analyze_stream_without_events() -> None:
    stats = analyze_stream(0.0, [(0.1, 0)], done=False)
    assert stats.events == 0
    assert not stats.complete


async def test_mock_and_client_over_a_real_socket() -> None:
    """The mock answers pipelined keep-alive requests in order, and streams chunk by chunk."""
    import asyncio

    from bench import loadgen
    from bench.mock_upstream import MockConfig, MockProtocol

    loop = asyncio.get_running_loop()
    config = MockConfig(5, 0.005)
    server = await loop.create_server(lambda: MockProtocol(config), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await loadgen.Connection.open("127.0.0.1", port)
        plain = loadgen.request_bytes("127.0.0.1", port, "/v1/chat/completions", b'{"a":1}')
        assert await conn.request(plain) == 200
        assert await conn.request(plain) == 200
        body = b'{"model":"bench","stream": true}'
        raw = loadgen.request_bytes("127.0.0.1", port, "/v1/chat/completions", body)
        status, stats = await conn.stream(raw)
        assert status == 200
        assert stats.complete and stats.events == 6  # 5 chunks and [DONE]
        assert stats.reads_with_events >= 5  # 5 ms apart: not one block
        assert await conn.request(plain) == 200  # the connection is reusable after a stream
        assert await loadgen.get_ok("127.0.0.1", port, "/v1/models")
        conn.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_mock_pacing_changes_through_its_control_path() -> None:
    from bench import loadgen
    from bench.mock_upstream import CONTROL_PATH, MockConfig, MockProtocol

    loop = asyncio.get_running_loop()
    config = MockConfig(5, 0.5)
    server = await loop.create_server(lambda: MockProtocol(config), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await loadgen.post_ok("127.0.0.1", port, CONTROL_PATH, b"0")
        assert config.interval_s == 0.0
        assert not await loadgen.post_ok("127.0.0.1", port, CONTROL_PATH, b"soon")
        assert await loadgen.post_ok("127.0.0.1", port, CONTROL_PATH, b"10")
        assert config.interval_s == 0.01
    finally:
        server.close()
        await server.wait_closed()


async def test_sse_client_staggers_its_workers() -> None:
    from bench import loadgen
    from bench.mock_upstream import MockConfig, MockProtocol

    loop = asyncio.get_running_loop()
    config = MockConfig(3, 0.0)
    server = await loop.create_server(lambda: MockProtocol(config), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body = b'{"model":"bench","stream":true,"messages":[]}'
    try:
        result = await loadgen.sse_streams(
            "127.0.0.1", port, "/v1/chat/completions", body, 4, 4, stagger_s=0.05
        )
    finally:
        server.close()
        await server.wait_closed()
    assert result.errors == 0 and len(result.streams) == 4
    # The last worker starts 3 x 50 ms after the first: the phase cannot be shorter.
    assert result.elapsed_s >= 0.15

"""Server-sent-event accounting for one stream: which read delivered which event, the time
to the first event, the gaps between events, and whether they came one per read."""

from __future__ import annotations

from dataclasses import dataclass, field


class ChunkedDecoder:
    """Incremental decoder of an HTTP/1.1 chunked body. feed() returns the body bytes that
    the new data completes; ``done`` turns true after the last (zero-size) chunk."""

    _SIZE, _DATA, _CRLF = 0, 1, 2

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = self._SIZE
        self._remaining = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while not self.done:
            if self._state == self._SIZE:
                eol = self._buf.find(b"\r\n")
                if eol < 0:
                    break
                size = int(bytes(self._buf[:eol]).split(b";", 1)[0].strip(), 16)
                del self._buf[: eol + 2]
                if size == 0:
                    self.done = True
                    break
                self._remaining = size
                self._state = self._DATA
            elif self._state == self._DATA:
                if not self._buf:
                    break
                take = min(self._remaining, len(self._buf))
                out += self._buf[:take]
                del self._buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._CRLF
            else:
                if len(self._buf) < 2:
                    break
                del self._buf[:2]
                self._state = self._SIZE
        return bytes(out)


class EventCounter:
    """Counts complete SSE events in a byte stream fed piece by piece (blank-line separated,
    LF or CRLF line ends)."""

    def __init__(self) -> None:
        self._tail = b""
        self.total = 0
        self.done_seen = False

    def feed(self, data: bytes) -> int:
        text = (self._tail + data).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        parts = text.split(b"\n\n")
        self._tail = parts.pop()
        complete = [p for p in parts if p.strip()]
        for event in complete:
            if event.strip().endswith(b"[DONE]"):
                self.done_seen = True
        self.total += len(complete)
        return len(complete)


@dataclass
class StreamStats:
    """What one stream looked like from the client."""

    ttft_s: float  # request sent -> first complete event
    total_s: float  # request sent -> last event
    events: int
    reads_with_events: int
    max_events_per_read: int
    gaps_s: list[float] = field(default_factory=list)  # between consecutive event arrivals
    complete: bool = True  # saw [DONE]


def analyze_stream(sent_at: float, arrivals: list[tuple[float, int]], done: bool) -> StreamStats:
    """Builds StreamStats from (arrival time, events completed by that read) pairs."""
    with_events = [(t, n) for t, n in arrivals if n > 0]
    if not with_events:
        nan = float("nan")
        return StreamStats(nan, nan, 0, 0, 0, [], False)
    gaps: list[float] = []
    prev: float | None = None
    for t, n in with_events:
        if prev is not None:
            gaps.append(t - prev)
        gaps.extend([0.0] * (n - 1))
        prev = t
    return StreamStats(
        ttft_s=with_events[0][0] - sent_at,
        total_s=with_events[-1][0] - sent_at,
        events=sum(n for _, n in with_events),
        reads_with_events=len(with_events),
        max_events_per_read=max(n for _, n in with_events),
        gaps_s=gaps,
        complete=done,
    )

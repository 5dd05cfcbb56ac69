"""host:port parsing for flags and environment variables."""

from __future__ import annotations


def split_host_port(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'127.0.0.1:8000', ':8000', '[::1]:8000' or '8000' -> (host, port); ValueError if bad."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{value!r} is not host:port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} in {value!r} is out of range 0-65535")
    return host, port


def base_url(url: str) -> str:
    """An OpenAI-compatible endpoint's base URL without a trailing slash or /v1 (the API paths
    add /v1; an engine serves /metrics beside it)."""
    text = url.rstrip("/")
    if text.endswith("/v1"):
        text = text[: -len("/v1")]
    return text

"""Remote API kinds a member may speak (types.proto Backend.kind): each module builds the
upstream request, translates the answer back to the shape the client asked in (OpenAI's, or
Anthropic's for /v1/messages), and maps the provider's errors. OpenAI-compatible members
without a credential asked in OpenAI's shape never come here: the relay sends their bytes as
they are (the hot path)."""

from __future__ import annotations

from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider, Translator, UpstreamCall
from gateway.providers.openai import AzureProvider, OpenAIProvider

__all__ = ["Provider", "Translator", "UpstreamCall", "build_providers"]


def build_providers() -> dict[str, Provider]:
    """kind -> its adapter (built once at start-up)."""
    providers: list[Provider] = [OpenAIProvider(), AzureProvider(), AnthropicProvider()]
    return {p.kind: p for p in providers}

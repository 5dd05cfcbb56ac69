"""Remote API kinds a member may speak (types.proto Backend.kind): each module builds the
upstream request, translates the answer back to OpenAI's shape, and maps the provider's errors.
Members of kind "openai" without a credential never come here: the relay sends their bytes as
they are (the hot path)."""

from __future__ import annotations

from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider, UpstreamCall
from gateway.providers.openai import AzureProvider, OpenAIProvider

__all__ = ["Provider", "UpstreamCall", "build_providers"]


def build_providers() -> dict[str, Provider]:
    """kind -> its adapter (built once at start-up)."""
    providers: list[Provider] = [OpenAIProvider(), AzureProvider(), AnthropicProvider()]
    return {p.kind: p for p in providers}

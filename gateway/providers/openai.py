"""OpenAI-compatible APIs (OpenAI, Together, Groq, a remote vLLM) and Azure OpenAI: the body
passes as it is; only the URL and the credential header differ."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote

from gateway.members import Member, base_url
from gateway.parsing import ParsedRequest
from gateway.providers.base import UpstreamCall


class OpenAIProvider:
    kind = "openai"
    translates = False

    def prepare(
        self, member: Member, req: ParsedRequest, headers: Mapping[str, str], key: str | None
    ) -> UpstreamCall:
        if key:
            headers = {**headers, "authorization": f"Bearer {key}"}
        return UpstreamCall(
            member.endpoint_url(req.endpoint.value), req.body_for(member.upstream_model), headers
        )

    def answer(self, body: bytes, model: str) -> bytes:
        return body

    def stream(
        self, chunks: AsyncIterator[bytes], model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        return chunks

    def error(self, status: int, body: bytes) -> bytes:
        return body


class AzureProvider(OpenAIProvider):
    """Azure OpenAI. With an api_version (2024-10-21, ...): the deployment URL
    {base}/openai/deployments/{deployment}/chat/completions?api-version=..., the deployment being
    the member's upstream_model (or the pool's name). Without one, or "v1": the v1 API,
    {base}/openai/v1/chat/completions, with the model in the body. The key goes in `api-key`;
    a credential that starts with "Bearer " (a Microsoft Entra token) goes in Authorization."""

    kind = "azure"

    def prepare(
        self, member: Member, req: ParsedRequest, headers: Mapping[str, str], key: str | None
    ) -> UpstreamCall:
        if key:
            auth = ("authorization", key) if key.startswith("Bearer ") else ("api-key", key)
            headers = {**headers, auth[0]: auth[1]}
        operation = req.endpoint.value.removeprefix("/v1/")
        base = base_url(member.url)
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        version = member.api_version
        if version and version != "v1":
            deployment = quote(member.upstream_model or req.model, safe="")
            url = (
                f"{base}/openai/deployments/{deployment}/{operation}"
                f"?api-version={quote(version, safe='')}"
            )
        else:
            url = f"{base}/openai/v1/{operation}"
        return UpstreamCall(url, req.body_for(member.upstream_model), headers)

"""OpenAI-compatible APIs (OpenAI, Together, Groq, a remote vLLM, local engines) and Azure
OpenAI: the body passes as it is; only the URL and the credential header differ. Anthropic
clients' requests (/v1/messages) are translated to chat completions here."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import orjson

from gateway.members import Member
from gateway.parsing import Endpoint, ParsedRequest
from gateway.providers.base import UpstreamCall
from gateway.providers.messages_in import ChatToMessages, to_chat
from llmpool.addr import base_url

_TO_MESSAGES = ChatToMessages()


class OpenAIProvider:
    kind = "openai"

    def prepare(
        self, member: Member, req: ParsedRequest, headers: Mapping[str, str], key: str | None
    ) -> UpstreamCall:
        if key:
            headers = {**headers, "authorization": f"Bearer {key}"}
        if req.endpoint is Endpoint.MESSAGES:
            body = orjson.dumps(to_chat(req.payload, member.upstream_model or req.model))
            url = self.url(member, req, Endpoint.CHAT)
            return UpstreamCall(url, body, headers, _TO_MESSAGES)
        return UpstreamCall(
            self.url(member, req, req.endpoint), req.body_for(member.upstream_model), headers
        )

    def url(self, member: Member, req: ParsedRequest, endpoint: Endpoint) -> str:
        return member.endpoint_url(endpoint.value)


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
        return super().prepare(member, req, headers, None)

    def url(self, member: Member, req: ParsedRequest, endpoint: Endpoint) -> str:
        operation = endpoint.value.removeprefix("/v1/")
        base = base_url(member.url)
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        version = member.api_version
        if version and version != "v1":
            deployment = quote(member.upstream_model or req.model, safe="")
            return (
                f"{base}/openai/deployments/{deployment}/{operation}"
                f"?api-version={quote(version, safe='')}"
            )
        return f"{base}/openai/v1/{operation}"

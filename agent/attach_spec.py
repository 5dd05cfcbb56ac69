"""Parsing of --attach specs: an engine the agent watches but did not start (attach mode)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.engines import adapter_for
from llmpool.config import NAME_RE
from llmpool.errors import InvalidArgumentError

ATTACH_VAR = "LLMPOOL_AGENT_ATTACH"
DEFAULT_ENGINE = "openai"
_KEYS = ("pool", "url", "engine", "model", "id", "health", "metrics")
_EXAMPLE = "pool=NAME,url=http://10.0.0.5:8000,engine=vllm"


@dataclass(frozen=True)
class AttachSpec:
    """One engine to watch: where it answers, what kind it is and which pool it serves."""

    replica_id: str
    pool: str
    url: str
    engine: str = DEFAULT_ENGINE
    # The model name the engine is asked for upstream.
    served_model: str = ""
    health_path: str = "/health"
    # "" when the engine has no metrics (load then comes from the gateways' in-flight counts).
    metrics_path: str = "/metrics"

    @property
    def model(self) -> str:
        return self.served_model or self.pool


def attach_id(agent_id: str, url: str) -> str:
    """Stable across agent restarts: the same agent watching the same URL gets the same id."""
    digest = hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"att-{agent_id}-{digest}"


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url {url!r} is not valid: give the engine's base URL, e.g. {_EXAMPLE}")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"url {url!r} has an invalid port") from None
    if parts.query or parts.fragment:
        raise ValueError(f"url {url!r} must not have a query or fragment")
    base = url.rstrip("/")
    if base.endswith("/v1"):
        raise ValueError(f"url {url!r} ends in /v1: give the base URL without it, e.g. {base[:-3]}")
    return base


def _check_path(key: str, value: str, optional: bool) -> str:
    if optional and value == "":
        return value
    if not value.startswith("/"):
        hint = f"; {key}= (empty) turns it off" if optional else ""
        raise ValueError(f"{key} {value!r} must be a path starting with /{hint}")
    return value


def _fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"{part!r} is not key=value")
        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r}: known keys are {', '.join(_KEYS)}")
        if key in fields:
            raise ValueError(f"{key} is given twice")
        fields[key] = value.strip()
    return fields


def _parse(text: str, agent_id: str) -> AttachSpec:
    fields = _fields(text)
    for required in ("pool", "url"):
        if not fields.get(required):
            raise ValueError(f"{required}= is required, e.g. {_EXAMPLE}")
    pool = fields["pool"]
    if not NAME_RE.match(pool):
        raise ValueError(
            f"pool {pool!r} is not a valid name: use 1-128 letters, digits and . _ : / -"
        )
    url = _check_url(fields["url"])
    engine = fields.get("engine") or DEFAULT_ENGINE
    try:
        adapter = adapter_for(engine)
    except InvalidArgumentError as exc:
        raise ValueError(str(exc)) from None
    replica_id = fields.get("id") or attach_id(agent_id, url)
    if not NAME_RE.match(replica_id):
        raise ValueError(
            f"id {replica_id!r} is not a valid name: use 1-128 letters, digits and . _ : / -"
            + ("" if "id" in fields else "; give one with id=")
        )
    health = _check_path("health", fields.get("health", adapter.health_path), optional=False)
    metrics = _check_path("metrics", fields.get("metrics", adapter.metrics_path), optional=True)
    return AttachSpec(
        replica_id=replica_id,
        pool=pool,
        url=url,
        engine=engine,
        served_model=fields.get("model", ""),
        health_path=health,
        metrics_path=metrics,
    )


def parse_attach(text: str, agent_id: str, source: str = "--attach") -> AttachSpec:
    """One spec `pool=P,url=U[,engine=E][,model=M][,id=I][,health=/h][,metrics=/m]`; ValueError
    naming where it came from, the spec and what to fix."""
    try:
        return _parse(text, agent_id)
    except ValueError as exc:
        raise ValueError(f"{source} {text!r}: {exc}") from None


def parse_attach_all(
    flags: Iterable[str], agent_id: str, env_value: str = ""
) -> tuple[AttachSpec, ...]:
    """The specs of the variable (`;` between specs), then those of the flags; ids unique."""
    given = [(ATTACH_VAR, text) for text in env_value.split(";")]
    given += [("--attach", text) for text in flags]
    specs: list[AttachSpec] = []
    seen: dict[str, str] = {}
    for source, text in given:
        text = text.strip()
        if not text:
            continue
        spec = parse_attach(text, agent_id, source)
        if spec.replica_id in seen:
            raise ValueError(
                f"{source} {text!r}: id {spec.replica_id!r} is taken by {seen[spec.replica_id]!r};"
                " give each spec its own id="
            )
        seen[spec.replica_id] = text
        specs.append(spec)
    return tuple(specs)

"""Validation of admin input (names, URLs, policies, engines) with actionable messages."""

from __future__ import annotations

from urllib.parse import urlsplit

from llmpool.config import NAME_RE
from llmpool.errors import InvalidArgumentError

from .model import BackendSpec, PoolSpec, Template

# Routing policies the gateway registers; the one list the controller accepts.
KNOWN_POLICIES: tuple[str, ...] = ("round_robin", "least_in_flight")
KNOWN_ENGINES: tuple[str, ...] = ("sim", "llamacpp", "vllm", "sglang", "tgi", "openai")
KNOWN_BACKEND_KINDS: tuple[str, ...] = ("openai",)


def check_name(what: str, value: str) -> str:
    if not value:
        raise InvalidArgumentError(f"{what} is required")
    if not NAME_RE.match(value):
        raise InvalidArgumentError(
            f"{what} {value!r} is not valid: use 1-128 letters, digits and . _ : / - "
            "(starting with a letter or digit)"
        )
    return value


def check_url(value: str) -> str:
    """A base URL like http://127.0.0.1:8001 (no trailing slash kept)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgumentError(
            f"url {value!r} is not valid: give a base URL like http://127.0.0.1:8001"
        )
    try:
        _ = parts.port
    except ValueError:
        raise InvalidArgumentError(f"url {value!r} has an invalid port") from None
    return value.rstrip("/")


def check_policy(value: str) -> str:
    if value not in KNOWN_POLICIES:
        raise InvalidArgumentError(
            f"unknown policy {value!r}: known policies are {', '.join(KNOWN_POLICIES)}"
        )
    return value


def check_template(pool: str, template: Template) -> Template:
    if template.engine not in KNOWN_ENGINES:
        raise InvalidArgumentError(
            f"pool {pool!r}: unknown engine {template.engine!r}: "
            f"known engines are {', '.join(KNOWN_ENGINES)}"
        )
    if template.ready_timeout_s <= 0:
        raise InvalidArgumentError(f"pool {pool!r}: template.ready_timeout_s must be > 0")
    return template


def check_pool(pool: PoolSpec) -> PoolSpec:
    check_name("pool name", pool.name)
    check_policy(pool.policy)
    if pool.template is not None:
        check_template(pool.name, pool.template)
    if pool.replicas > 0 and pool.template is None:
        raise InvalidArgumentError(
            f"pool {pool.name!r} asks for {pool.replicas} replicas but has no template: "
            "set pool.template (engine, command) first"
        )
    return pool


def check_backend(backend: BackendSpec) -> BackendSpec:
    check_name("backend id", backend.id)
    check_name("backend pool", backend.pool)
    check_url(backend.url)
    if backend.kind not in KNOWN_BACKEND_KINDS:
        raise InvalidArgumentError(
            f"backend {backend.id!r}: unknown kind {backend.kind!r}: "
            f"known kinds are {', '.join(KNOWN_BACKEND_KINDS)}"
        )
    if backend.weight < 0:
        raise InvalidArgumentError(f"backend {backend.id!r}: weight must be >= 0")
    return backend

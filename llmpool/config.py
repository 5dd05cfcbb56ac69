"""The YAML config file: pools, their replica templates and static backends, validated at load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
Engine = Literal["sim", "llamacpp", "vllm", "sglang", "tgi", "openai"]


class ConfigError(ValueError):
    """The config file cannot be used; the message says where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid name: use 1-128 letters, digits and . _ : / -")
    return value


class TemplateConfig(_Model):
    """How an agent starts one replica; {port} {host} {model} {replica_id} {pool} {python}
    in command and env are filled in by the agent."""

    engine: Engine = "sim"
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    ready_timeout_s: float = Field(default=60.0, gt=0)
    served_model: str = ""
    gpus: int = Field(default=0, ge=0)
    cpu_slots: int = Field(default=1, ge=0)


class BackendConfig(_Model):
    """A static OpenAI-compatible endpoint that llm-pool routes to but does not supervise."""

    id: str
    url: str
    pool: str = ""
    weight: int = Field(default=1, ge=0)
    enabled: bool = True
    kind: Literal["openai"] = "openai"
    zone: str = ""
    upstream_model: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    _id = field_validator("id")(_check_name)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"backend url {value!r} must start with http:// or https://")
        return value.rstrip("/")


class PoolConfig(_Model):
    """One model name served to clients, spread over replicas and static backends."""

    name: str
    policy: str = "round_robin"
    policy_params: dict[str, str] = Field(default_factory=dict)
    replicas: int = Field(default=0, ge=0)
    template: TemplateConfig | None = None
    backends: list[BackendConfig] = Field(default_factory=list)
    description: str = ""

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _replicas_need_template(self) -> PoolConfig:
        if self.replicas > 0 and self.template is None:
            raise ValueError(
                f"pool {self.name!r} asks for {self.replicas} replicas but has no template"
            )
        return self


class Config(_Model):
    """The whole file. Seeds the controller's store on its first start."""

    pools: list[PoolConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Config:
        seen_pools: set[str] = set()
        seen_backends: set[str] = set()
        for pool in self.pools:
            if pool.name in seen_pools:
                raise ValueError(f"pool {pool.name!r} is defined twice")
            seen_pools.add(pool.name)
            for backend in pool.backends:
                if backend.id in seen_backends:
                    raise ValueError(f"backend {backend.id!r} is defined twice")
                seen_backends.add(backend.id)
        return self

    def backends(self) -> list[BackendConfig]:
        """Every backend with its pool filled in from the pool it is listed under."""
        return [b.model_copy(update={"pool": p.name}) for p in self.pools for b in p.backends]


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'pools' list")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'top level'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    return parse_config(text, str(path))


def default_config_text() -> str:
    """The embedded config `llm-pool up` uses when given none."""
    return (Path(__file__).parent / "defaults" / "config.yaml").read_text()

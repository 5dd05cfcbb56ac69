"""Replica templates: weights and args end to end (config, admin proto, store), and the rules."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from controller.convert import mask_paths, pool_from_proto, pool_to_proto, specs_from_config
from controller.model import PoolSpec, Template
from controller.store import DB_FILE, Store
from controller.validation import check_pool
from llmpool.config import ConfigError, parse_config
from llmpool.errors import InvalidArgumentError
from llmpool.protoconv import from_proto, to_proto
from llmpool.v1 import types_pb2

VLLM = Template(
    engine="vllm", weights="Qwen/Qwen2.5-0.5B-Instruct", args=("--max-model-len", "4096"), gpus=1
)


def test_config_carries_weights_and_args_and_leaves_paths_to_the_engine() -> None:
    config = parse_config(
        """
pools:
  - name: qwen
    replicas: 1
    template:
      engine: vllm
      weights: Qwen/Qwen2.5-0.5B-Instruct
      args: [--max-model-len, "4096"]
      gpus: 1
"""
    )
    (pool,), _ = specs_from_config(config)
    assert pool.template == VLLM
    assert (VLLM.health_path, VLLM.metrics_path) == ("", "")


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("engine: vllm", "engine 'vllm' needs template.weights"),
        ("engine: tgi\n      args: [--x]", "engine 'tgi' needs template.weights"),
        ("engine: openai", "engine 'openai' has no default command"),
        ("engine: vllm\n      command: [vllm, serve]\n      weights: w", "template.weights only"),
        ("engine: sim\n      command: [x]\n      args: [--y]", "template.args only"),
        ("engine: trt", "llama-server"),
    ],
)
def test_config_load_refuses_templates_that_cannot_start(template: str, needle: str) -> None:
    text = f"pools:\n  - name: p\n    template:\n      {template}\n"
    with pytest.raises(ConfigError, match=needle):
        parse_config(text, "pools.yaml")


@pytest.mark.parametrize(
    "template",
    [
        Template(engine="sim"),
        Template(engine="llamacpp"),
        Template(engine="llamacpp", weights="/models/qwen.gguf", args=("--n_ctx", "4096")),
        Template(engine="sglang", weights="/models/qwen"),
        Template(engine="openai", command=("my-server", "--port", "{port}")),
        Template(engine="vllm", command=("vllm", "serve", "m")),
    ],
)
def test_startable_templates_pass(template: Template) -> None:
    assert check_pool(PoolSpec(name="p", replicas=1, template=template)).template == template


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        (Template(engine="llama-server"), "pool 'p': engine 'llama-server' needs template.weights"),
        (Template(engine="openai", weights="w"), "pool 'p': engine 'openai' has no default"),
        (Template(engine="vllm", command=("v",), args=("--a",)), "template.args only shape"),
        (Template(engine="vlm"), "pool 'p': unknown engine 'vlm'"),
    ],
)
def test_admin_validation_refuses_with_a_reason(template: Template, needle: str) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        check_pool(PoolSpec(name="p", template=template))


def test_proto_round_trip_and_update_mask() -> None:
    assert from_proto(Template, to_proto(VLLM, types_pb2.ReplicaTemplate)) == VLLM
    msg = pool_to_proto(PoolSpec(name="p", replicas=1, template=VLLM))
    assert pool_from_proto(msg).template == VLLM
    paths = mask_paths(
        FieldMask(paths=["template.weights", "template.args"]), msg, ["template"], "pool"
    )
    assert paths == {"template.weights", "template.args"}
    # Without a mask, set fields are the update: weights and args included.
    partial = types_pb2.Pool(name="p", template=types_pb2.ReplicaTemplate(weights="w2"))
    assert mask_paths(FieldMask(), partial, ["template"], "pool") == {"template.weights"}


async def test_store_round_trip_and_rows_from_before_weights(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        await store.put_pool(PoolSpec(name="qwen", replicas=1, template=VLLM))
        await store.put_pool(PoolSpec(name="old", template=Template(engine="sim")))
    finally:
        await store.close()
    # A row written before templates had weights and args (and with the old path defaults).
    old = '{"engine": "sim", "command": [], "env": {}, "health_path": "/health", '
    old += '"metrics_path": "/metrics", "ready_timeout_s": 60.0, "served_model": "", '
    old += '"gpus": 0, "cpu_slots": 1}'
    async with aiosqlite.connect(tmp_path / DB_FILE) as db:
        await db.execute(
            "UPDATE pools SET spec = json_set(spec, '$.template', json(?)) WHERE name = 'old'",
            (old,),
        )
        await db.commit()
    again = await Store.open(tmp_path)
    try:
        pools = {p.name: p for p in await again.load_pools()}
    finally:
        await again.close()
    assert pools["qwen"].template == VLLM
    assert pools["old"].template == Template(
        engine="sim", health_path="/health", metrics_path="/metrics"
    )

"""Store round trip, restart persistence, schema version and first-start seeding."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from controller.changes import Changes
from controller.convert import specs_from_config
from controller.desired import DesiredState
from controller.model import Assignment, BackendSpec, PoolSpec, Template
from controller.store import DB_FILE, SCHEMA_VERSION, Store
from llmpool.config import ConfigError, load_config, parse_config
from llmpool.errors import FailedPreconditionError

POOL = PoolSpec(
    name="llama",
    policy="least_in_flight",
    policy_params={"k": "v"},
    replicas=2,
    template=Template(engine="vllm", command=("vllm", "serve", "{model}"), env={"A": "1"}, gpus=1),
    description="d",
)
BACKEND = BackendSpec(
    id="b1", pool="llama", url="http://127.0.0.1:9000", weight=3, enabled=False, zone="edge",
    upstream_model="m", labels={"x": "y"}, draining=True,
)  # fmt: skip


async def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    assert await store.is_empty()
    await store.put_pool(POOL)
    await store.put_pool(PoolSpec(name="bare"))
    await store.put_backend(BACKEND)
    await store.put_assignment(Assignment("llama-abc123", "llama", "agent-1", False, 12.5))
    await store.close()

    again = await Store.open(tmp_path)
    try:
        assert not await again.is_empty()
        pools = {p.name: p for p in await again.load_pools()}
        assert pools == {"llama": POOL, "bare": PoolSpec(name="bare")}
        assert await again.load_backends() == [BACKEND]
        assert await again.load_assignments() == [
            Assignment("llama-abc123", "llama", "agent-1", False, 12.5)
        ]
        await again.delete_pool("llama")
        assert await again.load_backends() == []
        assert [p.name for p in await again.load_pools()] == ["bare"]
    finally:
        await again.close()


async def test_schema_version_is_set_and_newer_refused(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    await store.close()
    async with aiosqlite.connect(tmp_path / DB_FILE) as db:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        assert row is not None and row[0] == SCHEMA_VERSION
        await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        await db.commit()
    with pytest.raises(FailedPreconditionError, match="newer than this controller"):
        await Store.open(tmp_path)


async def test_config_seeds_only_the_first_start(tmp_path: Path) -> None:
    config = parse_config(
        "pools:\n  - name: p\n    backends:\n      - {id: b, url: 'http://127.0.0.1:1'}\n"
    )
    store = await Store.open(tmp_path)
    desired = DesiredState(store, Changes())
    assert await desired.load(specs_from_config(config)) is True
    assert desired.backends["b"].pool == "p"
    await desired.delete_backend("b")
    await desired.put_pool(PoolSpec(name="admin-made"))
    await store.close()

    store = await Store.open(tmp_path)
    desired = DesiredState(store, Changes())
    try:
        # The store is not empty: the config is not applied again, admin changes stay.
        assert await desired.load(specs_from_config(config)) is False
        assert "b" not in desired.backends
        assert set(desired.pools) == {"p", "admin-made"}
    finally:
        await store.close()


_V1_REPLICAS = """
CREATE TABLE pools (name TEXT PRIMARY KEY, policy TEXT NOT NULL, policy_params TEXT NOT NULL,
    replicas INTEGER NOT NULL, template TEXT, description TEXT NOT NULL);
CREATE TABLE backends (id TEXT PRIMARY KEY, pool TEXT NOT NULL, url TEXT NOT NULL,
    weight INTEGER NOT NULL, enabled INTEGER NOT NULL, kind TEXT NOT NULL, zone TEXT NOT NULL,
    upstream_model TEXT NOT NULL, labels TEXT NOT NULL, draining INTEGER NOT NULL);
CREATE TABLE replicas (replica_id TEXT PRIMARY KEY, pool TEXT NOT NULL, agent_id TEXT NOT NULL,
    desired INTEGER NOT NULL, created_at REAL NOT NULL);
INSERT INTO replicas VALUES ('llama-old', 'llama', 'agent-1', 1, 7.0);
PRAGMA user_version = 1;
"""


async def test_version_1_data_dir_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / DB_FILE) as db:
        await db.executescript(_V1_REPLICAS)
        await db.commit()

    store = await Store.open(tmp_path)
    try:
        # The old row holds no GPU numbers; new rows keep theirs.
        old = Assignment("llama-old", "llama", "agent-1", True, 7.0)
        assert await store.load_assignments() == [old]
        await store.put_assignment(
            Assignment("llama-gpu", "llama", "agent-1", True, 8.0, gpu_indices=(2, 0))
        )
    finally:
        await store.close()

    again = await Store.open(tmp_path)
    try:
        found = {a.replica_id: a for a in await again.load_assignments()}
        assert found["llama-gpu"].gpu_indices == (2, 0)
        assert found["llama-old"] == old
    finally:
        await again.close()
    async with aiosqlite.connect(tmp_path / DB_FILE) as db:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
    assert row is not None and row[0] == SCHEMA_VERSION


def test_config_refuses_nan_infinity_names_with_newlines_and_non_utf8(tmp_path: Path) -> None:
    for text, what in (
        ("pools:\n  - name: p\n    backends:\n      - {id: b, url: 'http://x', "
         "input_cost_per_mtok: .nan}\n", "input_cost_per_mtok"),
        ("pools:\n  - name: p\n    template: {engine: sim, ready_timeout_s: .inf}\n",
         "ready_timeout_s"),
        ('pools:\n  - name: "evil\\n"\n', "name"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=what):
            parse_config(text)
    latin1 = tmp_path / "pools.yaml"
    latin1.write_bytes("pools:\n  - name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(latin1)

"""SQLite persistence (aiosqlite) of pools, backends and assignments; versioned schema."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from llmpool.errors import FailedPreconditionError

from .model import Assignment, BackendSpec, PoolSpec, RouteRule, SplitArm, Template

SCHEMA_VERSION = 4
DB_FILE = "controller.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    name TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    policy_params TEXT NOT NULL,
    replicas INTEGER NOT NULL,
    template TEXT,
    description TEXT NOT NULL,
    rules TEXT NOT NULL DEFAULT '[]',
    splits TEXT NOT NULL DEFAULT '[]',
    split_header TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS backends (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    url TEXT NOT NULL,
    weight INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    kind TEXT NOT NULL,
    zone TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    labels TEXT NOT NULL,
    draining INTEGER NOT NULL,
    input_cost_per_mtok REAL NOT NULL DEFAULT 0,
    output_cost_per_mtok REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS replicas (
    replica_id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    desired INTEGER NOT NULL,
    created_at REAL NOT NULL,
    gpu_indices TEXT NOT NULL DEFAULT '[]'
);
"""

# Version reached -> the statements that bring the previous version's tables to it. A new
# data dir gets _SCHEMA as it stands and needs none of them.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE replicas ADD COLUMN gpu_indices TEXT NOT NULL DEFAULT '[]'",),
    3: (
        "ALTER TABLE pools ADD COLUMN rules TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE pools ADD COLUMN splits TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE pools ADD COLUMN split_header TEXT NOT NULL DEFAULT ''",
    ),
    4: (
        "ALTER TABLE backends ADD COLUMN input_cost_per_mtok REAL NOT NULL DEFAULT 0",
        "ALTER TABLE backends ADD COLUMN output_cost_per_mtok REAL NOT NULL DEFAULT 0",
    ),
}


def _template_json(t: Template | None) -> str | None:
    return None if t is None else orjson.dumps(dataclasses.asdict(t)).decode()


def _template_load(text: str | None) -> Template | None:
    if text is None:
        return None
    data: dict[str, Any] = orjson.loads(text)
    data["command"] = tuple(data.get("command", ()))
    # Rows written before templates had args load with the field's default.
    data["args"] = tuple(data.get("args", ()))
    return Template(**data)


def _rules_json(p: PoolSpec) -> tuple[str, str]:
    rules = [dataclasses.asdict(r) for r in p.rules]
    splits = [dataclasses.asdict(a) for a in p.splits]
    return orjson.dumps(rules).decode(), orjson.dumps(splits).decode()


def _rules_load(rules: str, splits: str) -> tuple[tuple[RouteRule, ...], tuple[SplitArm, ...]]:
    return (
        tuple(RouteRule(**r) for r in orjson.loads(rules)),
        tuple(SplitArm(**a) for a in orjson.loads(splits)),
    )


class Store:
    """One SQLite file in the data dir; every method awaits aiosqlite, so the loop never blocks."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, data_dir: Path) -> Store:
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        path = data_dir / DB_FILE
        db = await aiosqlite.connect(path)
        store = cls(db, path)
        try:
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise FailedPreconditionError(
                f"{self.path} has schema version {version}, newer than this controller's "
                f"{SCHEMA_VERSION}: upgrade llm-pool or use another --data-dir"
            )
        if version == SCHEMA_VERSION:
            return
        # One transaction: a crash half-way leaves the old version, to be migrated again.
        await self._db.execute("BEGIN")
        try:
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        await self._db.execute(statement)
            else:
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS.get(target, ()):
                        await self._db.execute(statement)
            await self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            await self._db.rollback()
            raise
        await self._db.commit()

    async def close(self) -> None:
        await self._db.close()

    async def is_empty(self) -> bool:
        async with self._db.execute(
            "SELECT (SELECT COUNT(*) FROM pools) + (SELECT COUNT(*) FROM backends)"
        ) as cur:
            row = await cur.fetchone()
        return not row or int(row[0]) == 0

    async def load_pools(self) -> list[PoolSpec]:
        async with self._db.execute(
            "SELECT name, policy, policy_params, replicas, template, description, "
            "rules, splits, split_header FROM pools"
        ) as cur:
            rows = await cur.fetchall()
        pools = []
        for r in rows:
            rules, splits = _rules_load(r[6], r[7])
            pools.append(
                PoolSpec(
                    name=r[0],
                    policy=r[1],
                    policy_params=orjson.loads(r[2]),
                    replicas=int(r[3]),
                    template=_template_load(r[4]),
                    description=r[5],
                    rules=rules,
                    splits=splits,
                    split_header=r[8],
                )
            )
        return pools

    async def load_backends(self) -> list[BackendSpec]:
        async with self._db.execute(
            "SELECT id, pool, url, weight, enabled, kind, zone, upstream_model, labels, draining, "
            "input_cost_per_mtok, output_cost_per_mtok FROM backends"
        ) as cur:
            rows = await cur.fetchall()
        return [
            BackendSpec(
                id=r[0],
                pool=r[1],
                url=r[2],
                weight=int(r[3]),
                enabled=bool(r[4]),
                kind=r[5],
                zone=r[6],
                upstream_model=r[7],
                labels=orjson.loads(r[8]),
                draining=bool(r[9]),
                input_cost_per_mtok=float(r[10]),
                output_cost_per_mtok=float(r[11]),
            )
            for r in rows
        ]

    async def load_assignments(self) -> list[Assignment]:
        async with self._db.execute(
            "SELECT replica_id, pool, agent_id, desired, created_at, gpu_indices FROM replicas"
        ) as cur:
            rows = await cur.fetchall()
        return [
            Assignment(r[0], r[1], r[2], bool(r[3]), float(r[4]), tuple(orjson.loads(r[5])))
            for r in rows
        ]

    async def put_pool(self, p: PoolSpec) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO pools (name, policy, policy_params, replicas, template, "
            "description, rules, splits, split_header) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                p.name,
                p.policy,
                orjson.dumps(p.policy_params).decode(),
                p.replicas,
                _template_json(p.template),
                p.description,
                *_rules_json(p),
                p.split_header,
            ),
        )
        await self._db.commit()

    async def delete_pool(self, name: str) -> None:
        """Removes the pool and its backends in one transaction."""
        await self._db.execute("DELETE FROM backends WHERE pool = ?", (name,))
        await self._db.execute("DELETE FROM pools WHERE name = ?", (name,))
        await self._db.commit()

    async def put_backend(self, b: BackendSpec) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO backends VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                b.id,
                b.pool,
                b.url,
                b.weight,
                int(b.enabled),
                b.kind,
                b.zone,
                b.upstream_model,
                orjson.dumps(b.labels).decode(),
                int(b.draining),
                b.input_cost_per_mtok,
                b.output_cost_per_mtok,
            ),
        )
        await self._db.commit()

    async def delete_backend(self, backend_id: str) -> None:
        await self._db.execute("DELETE FROM backends WHERE id = ?", (backend_id,))
        await self._db.commit()

    async def put_assignment(self, a: Assignment) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO replicas "
            "(replica_id, pool, agent_id, desired, created_at, gpu_indices) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                a.replica_id,
                a.pool,
                a.agent_id,
                int(a.desired),
                a.created_at,
                orjson.dumps(list(a.gpu_indices)).decode(),
            ),
        )
        await self._db.commit()

    async def delete_assignment(self, replica_id: str) -> None:
        await self._db.execute("DELETE FROM replicas WHERE replica_id = ?", (replica_id,))
        await self._db.commit()

    async def seed(self, pools: list[PoolSpec], backends: list[BackendSpec]) -> None:
        """Writes the config's pools and backends (first start only)."""
        for p in pools:
            await self.put_pool(p)
        for b in backends:
            await self.put_backend(b)

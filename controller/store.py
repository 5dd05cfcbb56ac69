"""SQLite persistence (aiosqlite) of pools, backends and assignments; versioned schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
import orjson

from llmpool.errors import FailedPreconditionError
from llmpool.protoconv import from_json, to_json

from .audit_event import AuditEvent, AuditQuery
from .model import Assignment, BackendSpec, PoolSpec
from .tokens import TokenRecord

SCHEMA_VERSION = 8
DB_FILE = "controller.sqlite3"

# Schema version 6: the audit log and the admin API's bearer tokens (hashes only).
_V6_TABLES = """
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    secret_sha256 TEXT NOT NULL
)
"""
# A new data dir's tokens table as version 8 has it (tenant-admin tokens name their tenant).
_TOKENS_TENANT = "ALTER TABLE tokens ADD COLUMN tenant TEXT NOT NULL DEFAULT ''"

# Schema version 7: the cost ledger, per minute, pool and backend.
_V7_TABLES = """
CREATE TABLE IF NOT EXISTS usage_minutes (
    minute INTEGER NOT NULL,
    pool TEXT NOT NULL,
    backend TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    PRIMARY KEY (minute, pool, backend)
)
"""

# Schema version 8: API keys (hashes only) and tenants, stored whole as JSON, and what each key
# spent, per minute.
_V8_TABLES = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_minutes (
    minute INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    api_key TEXT NOT NULL,
    requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    PRIMARY KEY (minute, tenant, api_key)
)
"""

# Pools and backends are stored whole as JSON (llmpool.protoconv), so a new field of theirs needs
# no column and no migration: rows written before it load with its default.
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS pools (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS backends (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    spec TEXT NOT NULL
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
    + _V6_TABLES
    + ";"
    + _V7_TABLES
    + ";"
    + _V8_TABLES
    + ";"
    + _TOKENS_TENANT
)

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
    # A column per field becomes one JSON document per row (SQLite's JSON functions).
    5: (
        "CREATE TABLE pools_v5 (name TEXT PRIMARY KEY, spec TEXT NOT NULL)",
        "INSERT INTO pools_v5 SELECT name, json_object('name', name, 'policy', policy, "
        "'policy_params', json(policy_params), 'replicas', replicas, 'template', json(template), "
        "'description', description, 'rules', json(rules), 'splits', json(splits), "
        "'split_header', split_header) FROM pools",
        "DROP TABLE pools",
        "ALTER TABLE pools_v5 RENAME TO pools",
        "CREATE TABLE backends_v5 (id TEXT PRIMARY KEY, pool TEXT NOT NULL, spec TEXT NOT NULL)",
        "INSERT INTO backends_v5 SELECT id, pool, json_object('id', id, 'pool', pool, "
        "'url', url, 'weight', weight, 'enabled', json(iif(enabled, 'true', 'false')), "
        "'kind', kind, 'zone', zone, 'upstream_model', upstream_model, 'labels', json(labels), "
        "'draining', json(iif(draining, 'true', 'false')), "
        "'input_cost_per_mtok', input_cost_per_mtok, "
        "'output_cost_per_mtok', output_cost_per_mtok) FROM backends",
        "DROP TABLE backends",
        "ALTER TABLE backends_v5 RENAME TO backends",
    ),
    6: tuple(s for s in _V6_TABLES.split(";") if s.strip()),
    7: (_V7_TABLES,),
    8: (*(s for s in _V8_TABLES.split(";") if s.strip()), _TOKENS_TENANT),
}


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
        async with self._db.execute("SELECT spec FROM pools") as cur:
            rows = await cur.fetchall()
        return [from_json(PoolSpec, r[0]) for r in rows]

    async def load_backends(self) -> list[BackendSpec]:
        async with self._db.execute("SELECT spec FROM backends") as cur:
            rows = await cur.fetchall()
        return [from_json(BackendSpec, r[0]) for r in rows]

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
            "INSERT OR REPLACE INTO pools (name, spec) VALUES (?, ?)", (p.name, to_json(p).decode())
        )
        await self._db.commit()

    async def delete_pool(self, name: str) -> None:
        """Removes the pool and its backends in one transaction."""
        await self._db.execute("DELETE FROM backends WHERE pool = ?", (name,))
        await self._db.execute("DELETE FROM pools WHERE name = ?", (name,))
        await self._db.commit()

    async def put_backend(self, b: BackendSpec) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO backends (id, pool, spec) VALUES (?, ?, ?)",
            (b.id, b.pool, to_json(b).decode()),
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

    async def add_audit_event(self, e: AuditEvent, keep: int) -> int:
        """Appends one event and drops the oldest beyond `keep`; returns the event's id."""
        cur = await self._db.execute(
            "INSERT INTO audit_events "
            "(time, actor, role, action, object, outcome, detail, before, after) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.time, e.actor, e.role, e.action, e.object, e.outcome, e.detail, e.before, e.after),
        )
        event_id = int(cur.lastrowid or 0)
        await cur.close()
        if event_id % 256 == 0:
            await self._db.execute("DELETE FROM audit_events WHERE id <= ?", (event_id - keep,))
        await self._db.commit()
        return event_id

    async def audit_events(self, q: AuditQuery) -> list[AuditEvent]:
        """Newest first, filtered by time range, actor and object (exact, or a kind such as
        "pool" for every pool)."""
        where: list[str] = ["1"]
        args: list[object] = []
        if q.since:
            where.append("time >= ?")
            args.append(q.since)
        if q.until:
            where.append("time < ?")
            args.append(q.until)
        if q.actor:
            where.append("actor = ?")
            args.append(q.actor)
        if q.object:
            where.append("(object = ? OR substr(object, 1, ?) = ?)")
            args += [q.object, len(q.object) + 1, q.object + "/"]
        if q.before_id:
            where.append("id < ?")
            args.append(q.before_id)
        sql = (
            "SELECT id, time, actor, role, action, object, outcome, detail, before, after "
            f"FROM audit_events WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        )
        async with self._db.execute(sql, (*args, q.limit)) as cur:
            rows = await cur.fetchall()
        return [AuditEvent(*r) for r in rows]

    async def load_tokens(self) -> list[TokenRecord]:
        async with self._db.execute(
            "SELECT id, name, role, created_at, expires_at, secret_sha256, tenant FROM tokens"
        ) as cur:
            rows = await cur.fetchall()
        return [TokenRecord(r[0], r[1], r[2], float(r[3]), float(r[4]), r[5], r[6]) for r in rows]

    async def put_token(self, t: TokenRecord) -> None:
        await self._db.execute(
            "INSERT INTO tokens (id, name, role, created_at, expires_at, secret_sha256, tenant) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (t.id, t.name, t.role, t.created_at, t.expires_at, t.secret_sha256, t.tenant),
        )
        await self._db.commit()

    async def delete_token(self, token_id: str) -> None:
        await self._db.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
        await self._db.commit()

    async def add_usage(self, rows: list[tuple[int, str, str, int, int, int, int, float]]) -> None:
        """Adds (minute, pool, backend, requests, prompt, cached, completion, cost) to the
        ledger's rows, and drops rows older than keep_before (a minute)."""
        await self._db.executemany(
            "INSERT INTO usage_minutes VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (minute, pool, backend) DO UPDATE SET "
            "requests = requests + excluded.requests, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "cached_tokens = cached_tokens + excluded.cached_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens, "
            "cost_usd = cost_usd + excluded.cost_usd",
            rows,
        )
        await self._db.commit()

    async def forget_usage_before(self, minute: int) -> None:
        await self._db.execute("DELETE FROM usage_minutes WHERE minute < ?", (minute,))
        await self._db.execute("DELETE FROM key_minutes WHERE minute < ?", (minute,))
        await self._db.commit()

    async def usage(
        self, first: int, last: int, pool: str
    ) -> list[tuple[str, str, int, int, int, int, float]]:
        """(pool, backend, requests, prompt, cached, completion, cost) summed over minutes
        first..last, for one pool or ("") all."""
        sql = (
            "SELECT pool, backend, SUM(requests), SUM(prompt_tokens), SUM(cached_tokens), "
            "SUM(completion_tokens), SUM(cost_usd) FROM usage_minutes "
            "WHERE minute BETWEEN ? AND ? AND (? = '' OR pool = ?) "
            "GROUP BY pool, backend ORDER BY pool, backend"
        )
        async with self._db.execute(sql, (first, last, pool, pool)) as cur:
            rows = await cur.fetchall()
        return [
            (str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6]))
            for r in rows
        ]

    async def load_documents(self, table: str) -> list[bytes]:
        """The JSON documents of api_keys or tenants."""
        assert table in ("api_keys", "tenants")
        async with self._db.execute(f"SELECT spec FROM {table}") as cur:
            rows = await cur.fetchall()
        return [r[0].encode() if isinstance(r[0], str) else r[0] for r in rows]

    async def put_document(self, table: str, key: str, spec: bytes) -> None:
        assert table in ("api_keys", "tenants")
        column = "id" if table == "api_keys" else "name"
        await self._db.execute(
            f"INSERT INTO {table} ({column}, spec) VALUES (?, ?) "
            f"ON CONFLICT ({column}) DO UPDATE SET spec = excluded.spec",
            (key, spec.decode()),
        )
        await self._db.commit()

    async def delete_document(self, table: str, key: str) -> None:
        assert table in ("api_keys", "tenants")
        column = "id" if table == "api_keys" else "name"
        await self._db.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,))
        await self._db.commit()

    async def add_key_usage(self, rows: list[tuple[int, str, str, int, int, float]]) -> None:
        """Adds (minute, tenant, api_key, requests, tokens, cost) to what keys spent."""
        await self._db.executemany(
            "INSERT INTO key_minutes VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (minute, tenant, api_key) DO UPDATE SET "
            "requests = requests + excluded.requests, tokens = tokens + excluded.tokens, "
            "cost_usd = cost_usd + excluded.cost_usd",
            rows,
        )
        await self._db.commit()

    async def key_usage(
        self, first: int, last: int, tenant: str
    ) -> list[tuple[str, str, int, int, float]]:
        """(tenant, api_key, requests, tokens, cost) summed over minutes first..last."""
        sql = (
            "SELECT tenant, api_key, SUM(requests), SUM(tokens), SUM(cost_usd) FROM key_minutes "
            "WHERE minute BETWEEN ? AND ? AND (? = '' OR tenant = ?) "
            "GROUP BY tenant, api_key ORDER BY tenant, api_key"
        )
        async with self._db.execute(sql, (first, last, tenant, tenant)) as cur:
            rows = await cur.fetchall()
        return [(str(r[0]), str(r[1]), int(r[2]), int(r[3]), float(r[4])) for r in rows]

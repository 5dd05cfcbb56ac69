"""API keys and tenants: the key book's changes, its round trip through the store (hashes only),
the gateways' key table, and what check_key and check_tenant refuse."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import pytest

from controller.apikeys import (
    KEY_RE,
    ApiKeyRecord,
    KeyBook,
    TenantRecord,
    check_key,
    check_tenant,
)
from controller.store import Store
from llmpool.errors import InvalidArgumentError, NotFoundError

NOW = 1_790_000_000.0

FULL = ApiKeyRecord(
    id="",
    name="ci-bot",
    tenant="team-a",
    pools=("a-chat", "shared"),
    rpm=60,
    tpm=100_000,
    budget_usd=12.5,
    budget_period="week",
    priority=7,
    expires_at=NOW + 86400,
    metadata={"owner": "alice", "ticket": "OPS-1"},
    require_signature=True,
)


def secret_part(secret: str) -> str:
    m = KEY_RE.match(secret)
    assert m is not None, secret
    return m.group(2)


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def open_book(path: Path) -> tuple[Store, KeyBook, Counter]:
    store = await Store.open(path)
    changes = Counter()
    book = KeyBook(store, on_change=changes)
    await book.load()
    return store, book, changes


async def test_keys_and_tenants_survive_a_restart_and_the_secret_is_never_stored(
    tmp_path: Path,
) -> None:
    store, book, _ = await open_book(tmp_path)
    try:
        record, secret = await book.create(FULL, NOW)
        shared, _ = await book.create(ApiKeyRecord(id="ignored"), NOW + 1)
        tenant = TenantRecord("team-a", 5, 6, 7.0, "day", "the A team")
        await book.put_tenant(tenant)
    finally:
        await store.close()
    assert secret.startswith(f"lpk_{record.id}_")
    assert KEY_RE.match(secret)
    # The id the spec carried is replaced by a fresh one.
    assert shared.id != "ignored" and len(shared.id) == 12
    assert record.created_at == NOW
    assert dataclasses.replace(record, id="", created_at=0.0, secret_sha256="") == FULL
    # Only the hash is in the file.
    raw = (tmp_path / "controller.sqlite3").read_bytes()
    assert secret_part(secret).encode() not in raw
    assert secret.encode() not in raw
    assert record.secret_sha256.encode() in raw

    store, reloaded, changes = await open_book(tmp_path)
    try:
        assert reloaded.keys == {record.id: record, shared.id: shared}
        assert reloaded.tenants == {"team-a": tenant}
        assert changes.calls == 1 and reloaded.version == 1
    finally:
        await store.close()


async def test_revoke_and_delete_tenant_remove_from_the_store(tmp_path: Path) -> None:
    store, book, _ = await open_book(tmp_path)
    try:
        keep, _ = await book.create(ApiKeyRecord(id="", name="keep"), NOW)
        gone, _ = await book.create(ApiKeyRecord(id="", name="gone"), NOW)
        await book.put_tenant(TenantRecord("t1"))
        await book.put_tenant(TenantRecord("t2"))
        assert await book.revoke(gone.id) == gone
        assert await book.delete_tenant("t2") == TenantRecord("t2")
        with pytest.raises(NotFoundError):
            await book.revoke(gone.id)
        with pytest.raises(NotFoundError):
            await book.delete_tenant("t2")
        with pytest.raises(NotFoundError):
            book.get_key(gone.id)
    finally:
        await store.close()
    store, reloaded, _ = await open_book(tmp_path)
    try:
        assert list(reloaded.keys) == [keep.id]
        assert list(reloaded.tenants) == ["t1"]
    finally:
        await store.close()


async def test_every_change_bumps_the_version_and_calls_on_change() -> None:
    changes = Counter()
    book = KeyBook(None, on_change=changes)
    record, _ = await book.create(ApiKeyRecord(id=""), NOW)
    await book.update(dataclasses.replace(record, rpm=1))
    await book.put_tenant(TenantRecord("t"))
    await book.put_tenant(TenantRecord("t", rpm=2))
    await book.delete_tenant("t")
    await book.revoke(record.id)
    assert (book.version, changes.calls) == (6, 6)
    # A refused change is no change.
    with pytest.raises(InvalidArgumentError):
        await book.create(ApiKeyRecord(id="", budget_period="year"), NOW)
    with pytest.raises(InvalidArgumentError):
        await book.put_tenant(TenantRecord("bad name"))
    with pytest.raises(NotFoundError):
        await book.revoke("nope")
    assert (book.version, changes.calls) == (6, 6)
    assert book.keys == {} and book.tenants == {}


async def test_update_keeps_the_creation_time_and_the_hash(tmp_path: Path) -> None:
    store, book, _ = await open_book(tmp_path)
    try:
        record, secret = await book.create(FULL, NOW)
        changed = dataclasses.replace(
            record, rpm=1, name="renamed", created_at=5.0, secret_sha256="00" * 32
        )
        updated = await book.update(changed)
        assert updated.rpm == 1 and updated.name == "renamed"
        assert updated.created_at == NOW
        assert updated.secret_sha256 == record.secret_sha256
        assert updated.secret_sha256 == hashlib.sha256(secret_part(secret).encode()).hexdigest()
        with pytest.raises(InvalidArgumentError):
            await book.update(dataclasses.replace(record, priority=5000))
        with pytest.raises(NotFoundError):
            await book.update(dataclasses.replace(record, id="000000000000"))
    finally:
        await store.close()
    store, reloaded, _ = await open_book(tmp_path)
    try:
        assert reloaded.keys == {record.id: updated}
    finally:
        await store.close()


async def test_listing_and_getting_are_confined_to_a_tenant() -> None:
    book = KeyBook(None)
    a2, _ = await book.create(ApiKeyRecord(id="", tenant="team-a"), NOW + 2)
    b1, _ = await book.create(ApiKeyRecord(id="", tenant="team-b"), NOW + 1)
    a1, _ = await book.create(ApiKeyRecord(id="", tenant="team-a"), NOW)
    shared, _ = await book.create(ApiKeyRecord(id=""), NOW + 3)
    # Oldest first.
    assert book.list_keys() == [a1, b1, a2, shared]
    assert book.list_keys("team-a") == [a1, a2]
    assert book.list_keys("") == [shared]
    assert book.list_keys("team-c") == []
    assert book.get_key(b1.id) == b1
    assert book.get_key(b1.id, "team-b") == b1
    with pytest.raises(NotFoundError):
        book.get_key(b1.id, "team-a")
    with pytest.raises(NotFoundError):
        await book.revoke(b1.id, "team-a")
    assert b1.id in book.keys
    assert await book.revoke(b1.id, "team-b") == b1


async def test_the_key_table_carries_hashes_never_secrets() -> None:
    book = KeyBook(None)
    record, secret = await book.create(FULL, NOW)
    other, other_secret = await book.create(ApiKeyRecord(id=""), NOW)
    await book.put_tenant(TenantRecord("team-a", rpm=5, budget_usd=9.0))
    table = book.table()
    entries = {e.id: e for e in table.keys}
    assert set(entries) == {record.id, other.id}
    entry = entries[record.id]
    assert entry.secret_sha256 == hashlib.sha256(secret_part(secret).encode()).digest()
    assert len(entry.secret_sha256) == 32
    assert entries[other.id].secret_sha256 == (
        hashlib.sha256(secret_part(other_secret).encode()).digest()
    )
    fields = (entry.tenant, list(entry.pools), entry.rpm, entry.tpm, entry.budget_usd)
    assert fields == ("team-a", ["a-chat", "shared"], 60, 100_000, 12.5)
    assert (entry.priority, entry.expires_at, entry.name) == (7, NOW + 86400, "ci-bot")
    assert entry.require_signature
    assert [(t.name, t.rpm, t.budget_usd) for t in table.tenants] == [("team-a", 5, 9.0)]
    serialized = table.SerializeToString()
    assert secret_part(secret).encode() not in serialized
    assert secret_part(other_secret).encode() not in serialized


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"budget_period": "year"}, "budget_period"),
        ({"budget_period": ""}, "budget_period"),
        ({"tenant": "team a"}, "tenant"),
        ({"tenant": "-lead"}, "tenant"),
        ({"name": "a name"}, "name"),
        ({"pools": ("p", "q", "p")}, "twice"),
        ({"pools": ("p", "no spaces")}, "pools"),
        ({"priority": 1001}, "priority"),
        ({"priority": -1001}, "priority"),
        ({"expires_at": -1.0}, "expires_at"),
        ({"expires_at": math.nan}, "expires_at"),
        ({"expires_at": math.inf}, "expires_at"),
        ({"budget_usd": math.nan}, "budget_usd"),
        ({"budget_usd": -1.0}, "budget_usd"),
        ({"rpm": -1}, "rpm"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"pools": tuple(f"p{i}" for i in range(257))}, "pools"),
    ],
)
def test_check_key_says_what_is_wrong(change: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidArgumentError, match=says):
        check_key(dataclasses.replace(FULL, id="abc", **change))  # type: ignore[arg-type]


def test_check_key_accepts_the_edges() -> None:
    for change in (
        {"priority": 1000},
        {"priority": 0},
        {"expires_at": 0.0},
        {"pools": ()},
        {"tenant": ""},
        {"name": ""},
        {"budget_period": "total"},
    ):
        key = dataclasses.replace(FULL, id="abc", **change)  # type: ignore[arg-type]
        assert check_key(key) is key


@pytest.mark.parametrize("priority", [-1, -1000])
def test_a_negative_priority_is_accepted(priority: int) -> None:
    key = dataclasses.replace(FULL, id="abc", priority=priority)
    assert check_key(key) is key


@pytest.mark.parametrize(
    ("tenant", "says"),
    [
        (TenantRecord("bad name"), "tenant"),
        (TenantRecord(""), "tenant"),
        (TenantRecord("t", budget_period="fortnight"), "budget_period"),
        (TenantRecord("t", budget_usd=math.inf), "budget_usd"),
        (TenantRecord("t", rpm=-5), "rpm"),
        (TenantRecord("t", description="d" * 4097), "description"),
    ],
)
def test_check_tenant_says_what_is_wrong(tenant: TenantRecord, says: str) -> None:
    with pytest.raises(InvalidArgumentError, match=says):
        check_tenant(tenant)


def test_check_tenant_accepts_a_good_one() -> None:
    tenant = TenantRecord("team-a", rpm=1, tpm=2, budget_usd=3, budget_period="total")
    assert check_tenant(tenant) is tenant

"""A tenant-admin manages its own tenant's API keys and sees its own (and shared) pools,
backends and usage, never another tenant's: KeysAdmin directly, then over a real controller
with mutual TLS and a tenant-admin bearer token."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controller.admin_keys import KeysAdmin, scope, sees, visible_backends, visible_pools
from controller.apikeys import ApiKeyRecord, KeyBook, TenantRecord
from controller.audit import AuditLog
from controller.audit_event import AuditQuery
from controller.auth import Caller
from controller.model import BackendSpec, PoolSpec
from controller.quotas import Quotas
from controller.server import ControllerServer
from controller.store import Store
from llmpool.clock import FakeClock
from llmpool.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from llmpool.v1 import admin_pb2, gateway_pb2, types_pb2
from tests.support import refused

from .conftest import admin_stub, channel

NOW = 1_790_000_000.0
ADMIN = Caller("root", "admin", "certificate")
ALICE = Caller("alice", "tenant-admin", "token", "team-a")
BOB = Caller("bob", "tenant-admin", "token", "team-b")
OPERATOR = Caller("ops", "operator", "certificate")


def test_scope_and_what_a_caller_sees() -> None:
    assert scope(ALICE) == "team-a"
    assert scope(ADMIN) is None and scope(OPERATOR) is None
    assert sees(ALICE, "team-a") and sees(ALICE, "")
    assert not sees(ALICE, "team-b")
    assert sees(ADMIN, "team-b") and sees(OPERATOR, "team-b")
    pools = [PoolSpec(name="a", tenant="team-a"), PoolSpec(name="b", tenant="team-b"),
             PoolSpec(name="shared")]  # fmt: skip
    assert [p.name for p in visible_pools(ALICE, pools)] == ["a", "shared"]
    assert [p.name for p in visible_pools(BOB, pools)] == ["b", "shared"]
    assert [p.name for p in visible_pools(ADMIN, pools)] == ["a", "b", "shared"]
    backends = [
        BackendSpec(id="ba", pool="a", url="http://10.0.0.1", tenant="team-a"),
        BackendSpec(id="bb", pool="b", url="http://10.0.0.2", tenant="team-b"),
        BackendSpec(id="bs", pool="shared", url="http://10.0.0.3"),
    ]
    by_name = {p.name: p for p in pools}
    assert [b.id for b in visible_backends(ALICE, backends, by_name)] == ["ba", "bs"]
    assert [b.id for b in visible_backends(ADMIN, backends, by_name)] == ["ba", "bb", "bs"]
    # A backend without a tenant of its own is its pool's: hidden with the pool.
    hidden = BackendSpec(id="bx", pool="b", url="http://10.0.0.4")
    assert visible_backends(ALICE, [hidden], by_name) == []


@pytest.fixture()
async def keys_admin(tmp_path: Path) -> AsyncIterator[tuple[KeysAdmin, KeyBook, Quotas, Store]]:
    store = await Store.open(tmp_path)
    clock = FakeClock(NOW)
    book = KeyBook(store)
    quotas = Quotas(book, clock)

    async def flush() -> None:
        rows = quotas.take_pending()
        if rows:
            await store.add_key_usage(rows)

    try:
        yield KeysAdmin(book, quotas, AuditLog(store, clock), store, flush), book, quotas, store
    finally:
        await store.close()


Fixture = tuple[KeysAdmin, KeyBook, Quotas, Store]


async def test_a_tenant_admin_creates_keys_of_its_own_tenant_only(keys_admin: Fixture) -> None:
    admin, book, _, store = keys_admin
    view, secret = await admin.create(ApiKeyRecord(id="", name="k"), NOW, ALICE)
    assert view.tenant == "team-a" and secret.startswith(f"lpk_{view.id}_")
    named, _ = await admin.create(ApiKeyRecord(id="", tenant="team-a"), NOW, ALICE)
    assert named.tenant == "team-a"
    with pytest.raises(PermissionDeniedError, match="team-a"):
        await admin.create(ApiKeyRecord(id="", tenant="team-b"), NOW, ALICE)
    assert {k.tenant for k in book.keys.values()} == {"team-a"} and len(book.keys) == 2
    # An admin makes keys of any tenant, or shared ones.
    other, _ = await admin.create(ApiKeyRecord(id="", tenant="team-b"), NOW, ADMIN)
    shared, _ = await admin.create(ApiKeyRecord(id=""), NOW, ADMIN)
    assert (other.tenant, shared.tenant) == ("team-b", "")
    # The view never carries the hash.
    assert not hasattr(view, "secret_sha256")
    events = await store.audit_events(AuditQuery(actor="alice"))
    assert [(e.action, e.object, e.outcome) for e in reversed(events)] == [
        ("CreateApiKey", f"api_key/{view.id}", "ok"),
        ("CreateApiKey", f"api_key/{named.id}", "ok"),
        # Reaching past its tenant is refused and recorded.
        ("CreateApiKey", "tenant/team-b", "denied"),
    ]
    made = events[-1]
    assert "secret_sha256" not in made.after
    assert json.loads(made.after)["tenant"] == "team-a"


async def test_listing_is_confined_to_the_tenant(keys_admin: Fixture) -> None:
    admin, _, _, _ = keys_admin
    a, _ = await admin.create(ApiKeyRecord(id=""), NOW, ALICE)
    b, _ = await admin.create(ApiKeyRecord(id=""), NOW + 1, BOB)
    shared, _ = await admin.create(ApiKeyRecord(id=""), NOW + 2, ADMIN)
    assert [v.id for v in admin.list_keys("", ALICE)] == [a.id]
    assert [v.id for v in admin.list_keys("team-a", ALICE)] == [a.id]
    assert admin.list_keys("team-b", ALICE) == []
    assert [v.id for v in admin.list_keys("", BOB)] == [b.id]
    assert [v.id for v in admin.list_keys("", ADMIN)] == [a.id, b.id, shared.id]
    assert [v.id for v in admin.list_keys("team-b", ADMIN)] == [b.id]


async def test_another_tenants_key_is_not_found_to_a_tenant_admin(keys_admin: Fixture) -> None:
    admin, book, _, store = keys_admin
    mine, _ = await admin.create(ApiKeyRecord(id=""), NOW, ALICE)
    theirs, _ = await admin.create(ApiKeyRecord(id=""), NOW, BOB)
    spec = dataclasses.replace(book.keys[theirs.id], rpm=1)
    with pytest.raises(NotFoundError):
        await admin.update(spec, {"rpm"}, ALICE)
    with pytest.raises(NotFoundError):
        await admin.revoke(theirs.id, ALICE)
    assert book.keys[theirs.id].rpm == 0
    # Its own key it changes, but may not give away.
    updated = await admin.update(dataclasses.replace(book.keys[mine.id], rpm=9), {"rpm"}, ALICE)
    assert updated.rpm == 9 and updated.tenant == "team-a"
    moved = dataclasses.replace(book.keys[mine.id], tenant="team-b")
    with pytest.raises(PermissionDeniedError):
        await admin.update(moved, {"tenant"}, ALICE)
    assert book.keys[mine.id].tenant == "team-a"
    # Naming its own tenant is no move.
    same = await admin.update(dataclasses.replace(moved, tenant="team-a"), {"tenant"}, ALICE)
    assert same.tenant == "team-a"
    # An admin moves keys between tenants.
    assert (await admin.update(moved, {"tenant"}, ADMIN)).tenant == "team-b"
    assert (await admin.revoke(mine.id, BOB)).id == mine.id
    assert mine.id not in book.keys and theirs.id in book.keys
    events = await store.audit_events(AuditQuery(object=f"api_key/{mine.id}"))
    assert [(e.actor, e.action, e.outcome) for e in reversed(events)] == [
        ("alice", "CreateApiKey", "ok"),
        ("alice", "UpdateApiKey", "ok"),
        ("alice", "UpdateApiKey", "denied"),
        ("alice", "UpdateApiKey", "ok"),
        ("root", "UpdateApiKey", "ok"),
        ("bob", "RevokeApiKey", "ok"),
    ]


async def test_update_refuses_fields_that_cannot_change(keys_admin: Fixture) -> None:
    admin, book, _, _ = keys_admin
    view, _ = await admin.create(ApiKeyRecord(id=""), NOW, ADMIN)
    record = book.keys[view.id]
    for path in ("id", "created_at", "secret_sha256"):
        with pytest.raises(InvalidArgumentError, match=path):
            await admin.update(dataclasses.replace(record, created_at=1.0), {path}, ADMIN)
    assert book.keys[view.id] == record


async def test_update_refuses_a_path_that_is_no_field(keys_admin: Fixture) -> None:
    admin, book, _, _ = keys_admin
    view, _ = await admin.create(ApiKeyRecord(id=""), NOW, ADMIN)
    with pytest.raises(InvalidArgumentError):
        await admin.update(book.keys[view.id], {"spent_usd"}, ADMIN)


async def test_usage_by_key_is_confined_to_the_tenant(keys_admin: Fixture) -> None:
    admin, _, quotas, store = keys_admin
    a, _ = await admin.create(ApiKeyRecord(id="", budget_usd=5), NOW, ALICE)
    b, _ = await admin.create(ApiKeyRecord(id=""), NOW, BOB)
    minute = int(NOW // 60)
    await store.add_key_usage([(minute - 10, "team-b", b.id, 3, 30, 0.3)])
    # Not stored yet: usage flushes what is pending first.
    quotas.record(
        "gw",
        {
            "key/" + a.id: gateway_pb2.SubjectUsage(requests=2, tokens=20, cost_usd=0.5),
            "key/" + b.id: gateway_pb2.SubjectUsage(requests=1, tokens=5, cost_usd=0.1),
        },
    )
    rows = await admin.usage(0, 0, "", ALICE)
    assert [(r.tenant, r.api_key, r.requests, r.tokens, r.cost_usd) for r in rows] == [
        ("team-a", a.id, 2, 20, 0.5)
    ]
    assert await admin.usage(0, 0, "team-b", ALICE) == []
    assert [(r.api_key, r.requests) for r in await admin.usage(0, 0, "", BOB)] == [(b.id, 4)]
    assert len(await admin.usage(0, 0, "", ADMIN)) == 2
    # A window before the reports leaves out what came after it.
    assert await admin.usage(1.0, (minute - 11) * 60, "", ADMIN) == []
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError):
            await admin.usage(bad, 0, "", ADMIN)
    # The view shows what the key spent this period.
    assert admin.list_keys("", ALICE)[0].spent_usd == 0.5


async def test_tenants_are_listed_with_their_spend(keys_admin: Fixture) -> None:
    admin, book, quotas, store = keys_admin
    await admin.put_tenant(TenantRecord("team-b", budget_usd=1), ADMIN)
    await admin.put_tenant(TenantRecord("team-a", budget_usd=1), ADMIN)
    key, _ = await admin.create(ApiKeyRecord(id=""), NOW, ALICE)
    quotas.record("gw", {"key/" + key.id: gateway_pb2.SubjectUsage(requests=1, cost_usd=0.25)})
    assert [(t.name, spent) for t, spent in admin.tenants()] == [("team-a", 0.25), ("team-b", 0)]
    await admin.delete_tenant("team-b", ADMIN)
    assert list(book.tenants) == ["team-a"]
    with pytest.raises(NotFoundError):
        await admin.delete_tenant("team-b", ADMIN)
    events = await store.audit_events(AuditQuery(object="tenant"))
    assert [e.action for e in reversed(events)] == ["PutTenant", "PutTenant", "DeleteTenant"]


# --- over gRPC, with mutual TLS and a tenant-admin bearer token -------------------------------


def new_key(tenant: str = "", name: str = "") -> admin_pb2.CreateApiKeyRequest:
    return admin_pb2.CreateApiKeyRequest(key=types_pb2.ApiKey(tenant=tenant, name=name))


async def test_a_tenant_admin_token_over_grpc(secure: ControllerServer, pki: Path) -> None:
    async with channel(secure, pki, "admin") as ch:
        root = admin_stub(ch)
        for name, tenant in (("a-chat", "team-a"), ("b-chat", "team-b"), ("shared", "")):
            await root.CreatePool(
                admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name=name, tenant=tenant))
            )
        for backend_id, pool, tenant in (
            ("ba", "a-chat", "team-a"), ("bb", "b-chat", "team-b"), ("bs", "shared", "")
        ):  # fmt: skip
            backend = types_pb2.Backend(
                id=backend_id, pool=pool, url="http://10.0.0.5:8000", tenant=tenant
            )
            await root.AddBackend(admin_pb2.AddBackendRequest(backend=backend))
        b_key = (await root.CreateApiKey(new_key("team-b"))).key
        made = await root.CreateToken(
            admin_pb2.CreateTokenRequest(name="alice", role="tenant-admin", tenant="team-a")
        )
        assert made.info.tenant == "team-a" and made.info.role == "tenant-admin"
        for bad in (
            admin_pb2.CreateTokenRequest(name="nobody", role="tenant-admin"),
            admin_pb2.CreateTokenRequest(name="ops", role="operator", tenant="team-a"),
            admin_pb2.CreateTokenRequest(name="odd", role="tenant-admin", tenant="bad name"),
        ):
            err = await refused(root.CreateToken(bad))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    bearer = (("authorization", f"Bearer {made.token}"),)
    # The token names the caller whatever certificate carries it.
    async with channel(secure, pki, "viewer") as ch:
        alice = admin_stub(ch)
        mine = await alice.CreateApiKey(new_key(name="ci"), metadata=bearer)
        assert mine.key.tenant == "team-a" and mine.secret.startswith(f"lpk_{mine.key.id}_")
        err = await refused(alice.CreateApiKey(new_key("team-b"), metadata=bearer))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

        listed = await alice.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=bearer)
        assert [k.id for k in listed.keys] == [mine.key.id]
        theirs = await alice.ListApiKeys(
            admin_pb2.ListApiKeysRequest(tenant="team-b"), metadata=bearer
        )
        assert list(theirs.keys) == []
        err = await refused(
            alice.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(id=b_key.id), metadata=bearer)
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = await refused(
            alice.UpdateApiKey(
                admin_pb2.UpdateApiKeyRequest(key=types_pb2.ApiKey(id=b_key.id, rpm=1)),
                metadata=bearer,
            )
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = await refused(
            alice.UpdateApiKey(
                admin_pb2.UpdateApiKeyRequest(
                    key=types_pb2.ApiKey(id=mine.key.id, tenant="team-b")
                ),
                metadata=bearer,
            )
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

        pools = await alice.ListPools(admin_pb2.ListPoolsRequest(), metadata=bearer)
        assert sorted(p.name for p in pools.pools) == ["a-chat", "shared"]
        own = await alice.GetPool(admin_pb2.GetPoolRequest(name="a-chat"), metadata=bearer)
        assert own.tenant == "team-a"
        err = await refused(alice.GetPool(admin_pb2.GetPoolRequest(name="b-chat"), metadata=bearer))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = await refused(
            alice.CreatePool(
                admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name="mine", tenant="team-a")),
                metadata=bearer,
            )
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "tenant-admin" in (err.details() or "")
        err = await refused(alice.ListTenants(admin_pb2.ListTenantsRequest(), metadata=bearer))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

        backends = await alice.ListBackends(admin_pb2.ListBackendsRequest(), metadata=bearer)
        assert sorted(b.id for b in backends.backends) == ["ba", "bs"]
        err = await refused(alice.GetBackend(admin_pb2.GetBackendRequest(id="bb"), metadata=bearer))
        assert err.code() == grpc.StatusCode.NOT_FOUND

        # Usage: what its own tenant's keys spent, asked by key or not.
        minute = int(time.time() // 60)
        await secure.parts.store.add_key_usage(
            [(minute, "team-a", mine.key.id, 2, 20, 0.5), (minute, "team-b", b_key.id, 3, 30, 1.0)]
        )
        for request in (
            admin_pb2.GetUsageRequest(),
            admin_pb2.GetUsageRequest(by_key=True),
            admin_pb2.GetUsageRequest(by_key=True, tenant="team-a"),
        ):
            usage = await alice.GetUsage(request, metadata=bearer)
            assert [(r.tenant, r.api_key, r.requests) for r in usage.rows] == [
                ("team-a", mine.key.id, 2)
            ]
            assert usage.cost_usd == 0.5
        usage = await alice.GetUsage(
            admin_pb2.GetUsageRequest(by_key=True, tenant="team-b"), metadata=bearer
        )
        assert list(usage.rows) == []

        revoked = await alice.RevokeApiKey(
            admin_pb2.RevokeApiKeyRequest(id=mine.key.id), metadata=bearer
        )
        assert revoked.id == mine.key.id
    assert set(secure.parts.keys.keys) == {b_key.id}
    assert "mine" not in secure.parts.desired.pools
    events = await secure.parts.admin.audit_events(AuditQuery(actor="alice"))
    assert [(e.action, e.outcome) for e in reversed(events)] == [
        ("CreateApiKey", "ok"),
        ("CreateApiKey", "denied"),
        ("UpdateApiKey", "denied"),
        ("CreatePool", "denied"),
        ("ListTenants", "denied"),
        ("RevokeApiKey", "ok"),
    ]
    assert all(e.role == "tenant-admin" for e in events)


async def test_backends_of_another_tenants_pool_are_hidden(
    secure: ControllerServer, pki: Path
) -> None:
    async with channel(secure, pki, "admin") as ch:
        root = admin_stub(ch)
        pool = types_pb2.Pool(name="b-chat", tenant="team-b")
        await root.CreatePool(admin_pb2.CreatePoolRequest(pool=pool))
        backend = types_pb2.Backend(id="bb", pool="b-chat", url="http://10.0.0.9:8000")
        await root.AddBackend(admin_pb2.AddBackendRequest(backend=backend))
        made = await root.CreateToken(
            admin_pb2.CreateTokenRequest(name="alice", role="tenant-admin", tenant="team-a")
        )
    bearer = (("authorization", f"Bearer {made.token}"),)
    async with channel(secure, pki, "viewer") as ch:
        alice = admin_stub(ch)
        err = await refused(alice.GetPool(admin_pb2.GetPoolRequest(name="b-chat"), metadata=bearer))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        listed = await alice.ListBackends(
            admin_pb2.ListBackendsRequest(pool="b-chat"), metadata=bearer
        )
        assert list(listed.backends) == []
        err = await refused(alice.GetBackend(admin_pb2.GetBackendRequest(id="bb"), metadata=bearer))
        assert err.code() == grpc.StatusCode.NOT_FOUND

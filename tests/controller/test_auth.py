"""Mutual TLS, RBAC, bearer tokens and the audit log, over a real grpc.aio server."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller import rbac
from controller.audit_event import AuditQuery
from controller.server import ControllerServer
from llmpool.certs import identity_of, init_ca, issue
from llmpool.v1 import (
    admin_pb2,
    agent_pb2,
    agent_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    types_pb2,
)
from tests.support import refused

from .conftest import admin_stub, channel

DENIED = grpc.StatusCode.PERMISSION_DENIED


BACKEND = types_pb2.Backend(id="b1", pool="p", url="http://10.0.0.5:8000")


def test_every_rpc_of_every_service_has_roles_in_the_table() -> None:
    for module, service in (
        (admin_pb2, "AdminService"),
        (agent_pb2, "AgentService"),
        (gateway_pb2, "GatewayService"),
    ):
        desc = module.DESCRIPTOR.services_by_name[service]
        for method in desc.methods:
            path = f"/{desc.full_name}/{method.name}"
            assert rbac.RPC_ROLES.get(path), f"{path} declares no role in controller/rbac.py"
    assert not rbac.allowed("/llmpool.v1.AdminService/NotAMethod", "admin")
    assert rbac.allowed("/llmpool.v1.AdminService/ListPools", "viewer")
    assert not rbac.allowed("/llmpool.v1.AdminService/ListPools", "agent")
    assert not rbac.allowed("/llmpool.v1.AdminService/ScalePool", "viewer")
    assert rbac.allowed("/llmpool.v1.AdminService/ScalePool", "operator")
    assert not rbac.allowed("/llmpool.v1.AdminService/CreatePool", "operator")


def test_certificates_carry_name_and_role(tmp_path: Path) -> None:
    init_ca(tmp_path)
    crt, key = issue(tmp_path, "viewer", "alice")
    ident = identity_of(crt.read_bytes())
    assert ident is not None and (ident.name, ident.role) == ("alice", "viewer")
    assert key.stat().st_mode & 0o077 == 0
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0


async def test_a_call_without_a_client_certificate_is_refused(
    secure: ControllerServer, pki: Path
) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{secure.port}", creds) as ch:
        err = await refused(admin_stub(ch).ListPools(admin_pb2.ListPoolsRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secure.port}") as ch:
        err = await refused(admin_stub(ch).ListPools(admin_pb2.ListPoolsRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_of_another_ca_is_refused(
    secure: ControllerServer, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    init_ca(other)
    issue(other, "admin")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(other / "ca.crt").read_bytes(),
        private_key=(other / "admin.key").read_bytes(),
        certificate_chain=(other / "admin.crt").read_bytes(),
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{secure.port}", creds) as ch:
        err = await refused(admin_stub(ch).ListPools(admin_pb2.ListPoolsRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_viewer_reads_and_is_denied_changes_which_the_audit_log_shows(
    secure: ControllerServer, pki: Path
) -> None:
    async with channel(secure, pki, "viewer") as ch:
        viewer = admin_stub(ch)
        await viewer.ListPools(admin_pb2.ListPoolsRequest(), timeout=5)
        err = await refused(viewer.AddBackend(admin_pb2.AddBackendRequest(backend=BACKEND)))
        assert err.code() == DENIED
        assert "viewer" in (err.details() or "") and "admin" in (err.details() or "")
        err = await refused(viewer.ListAuditEvents(admin_pb2.ListAuditEventsRequest()))
        assert err.code() == DENIED
    assert "b1" not in secure.parts.desired.backends
    async with channel(secure, pki, "admin") as ch:
        events = (await admin_stub(ch).ListAuditEvents(admin_pb2.ListAuditEventsRequest())).events
    denied = [(e.actor, e.role, e.action, e.outcome) for e in events]
    assert ("viewer", "viewer", "AddBackend", "denied") in denied
    assert ("viewer", "viewer", "ListAuditEvents", "denied") in denied


async def test_components_may_call_only_their_own_service(
    secure: ControllerServer, pki: Path
) -> None:
    async with channel(secure, pki, "agent") as ch:
        err = await refused(admin_stub(ch).ListPools(admin_pb2.ListPoolsRequest()))
        assert err.code() == DENIED
        gw = gateway_pb2_grpc.GatewayServiceStub(ch)
        call = gw.WatchRouting(gateway_pb2.WatchRoutingRequest(gateway_id="x"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == DENIED
        # Any authenticated peer may ask for health.
        health = health_pb2_grpc.HealthStub(ch)
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    async with channel(secure, pki, "gateway") as ch:
        agent = agent_pb2_grpc.AgentServiceStub(ch)
        call = agent.Connect(iter([agent_pb2.AgentMessage()]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == DENIED
        watch = gateway_pb2_grpc.GatewayServiceStub(ch).WatchRouting(
            gateway_pb2.WatchRoutingRequest(gateway_id="g")
        )
        first = await anext(aiter(watch))
        assert first.version >= 1
        watch.cancel()


async def test_admin_changes_are_audited_with_before_and_after(
    secure: ControllerServer, pki: Path
) -> None:
    async with channel(secure, pki, "admin") as ch:
        admin = admin_stub(ch)
        await admin.CreatePool(admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name="p")))
        await admin.AddBackend(admin_pb2.AddBackendRequest(backend=BACKEND))
        await admin.SetBackendEnabled(admin_pb2.SetBackendEnabledRequest(id="b1", enabled=False))
        by_object = await admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(object="backend/b1")
        )
        by_kind = await admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(object="pool"))
        nobody = await admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(actor="mallory"))
    assert [e.action for e in by_object.events] == ["SetBackendEnabled", "AddBackend"]
    toggled = by_object.events[0]
    assert toggled.actor == "admin" and toggled.outcome == "ok"
    assert json.loads(toggled.before)["enabled"] is True
    assert json.loads(toggled.after)["enabled"] is False
    assert [e.action for e in by_kind.events] == ["CreatePool"]
    assert json.loads(by_kind.events[0].after)["name"] == "p"
    assert nobody.events == []


async def test_a_token_grants_its_role_until_revoked(secure: ControllerServer, pki: Path) -> None:
    async with channel(secure, pki, "admin") as ch:
        admin = admin_stub(ch)
        await admin.CreatePool(admin_pb2.CreatePoolRequest(pool=types_pb2.Pool(name="p")))
        made = await admin.CreateToken(
            admin_pb2.CreateTokenRequest(name="ops@example", role="operator")
        )
        listed = await admin.ListTokens(admin_pb2.ListTokensRequest())
    assert made.token.startswith("lpt_") and made.info.role == "operator"
    assert [t.name for t in listed.tokens] == ["ops@example"]
    # The store keeps a hash, never the token.
    assert made.token.encode() not in secure.parts.store.path.read_bytes()
    bearer = (("authorization", f"Bearer {made.token}"),)
    async with channel(secure, pki, "viewer") as ch:
        viewer = admin_stub(ch)
        scaled = await viewer.ScalePool(
            admin_pb2.ScalePoolRequest(name="p", replicas=0), metadata=bearer
        )
        assert scaled.name == "p"
        err = await refused(
            viewer.DeletePool(admin_pb2.DeletePoolRequest(name="p"), metadata=bearer)
        )
        assert err.code() == DENIED
        bad = (("authorization", made.token[:-2] + "xx"),)
        err = await refused(viewer.ListPools(admin_pb2.ListPoolsRequest(), metadata=bad))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        async with channel(secure, pki, "admin") as ach:
            await admin_stub(ach).RevokeToken(admin_pb2.RevokeTokenRequest(id=made.info.id))
        err = await refused(viewer.ListPools(admin_pb2.ListPoolsRequest(), metadata=bearer))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert made.token not in (err.details() or "")
    # The revoked token's call is in the audit log under the certificate that carried it.
    by_viewer = await secure.parts.admin.audit_events(AuditQuery(actor="viewer"))
    assert ("ListPools", "unauthenticated") in [(e.action, e.outcome) for e in by_viewer]
    metrics = secure.metrics.registry
    assert (
        metrics.get_sample_value(
            "llmpool_controller_rpc_refused_total", {"reason": "unauthenticated"}
        )
        == 2
    )
    assert (
        metrics.get_sample_value(
            "llmpool_controller_rpc_refused_total", {"reason": "permission_denied"}
        )
        == 1
    )
    events = await secure.parts.admin.audit_events(AuditQuery(actor="ops@example"))
    assert [(e.action, e.outcome) for e in events] == [
        ("DeletePool", "denied"),
        ("ScalePool", "ok"),
    ]

"""AdminService servicer: converts protobuf to domain types, calls Admin, converts back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmpool.errors import NotFoundError
from llmpool.protoconv import from_proto, to_proto
from llmpool.v1 import admin_pb2, admin_pb2_grpc, types_pb2

from .admin import Admin
from .admin_keys import (
    KEY_FIELDS,
    KeysAdmin,
    scope,
    sees,
    sees_backend,
    visible_backends,
    visible_pools,
)
from .apikeys import ApiKeyRecord, TenantRecord
from .audit_event import AuditQuery
from .auth import Authenticator, Caller
from .convert import (
    BACKEND_FIELDS,
    POOL_FIELDS,
    backend_from_proto,
    backend_to_proto,
    mask_paths,
    pool_from_proto,
    pool_to_proto,
)

Ctx = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, admin: Admin, auth: Authenticator, keys: KeysAdmin) -> None:
        self._admin = admin
        self._auth = auth
        self._keys = keys

    def _by(self, context: Ctx) -> Caller:
        # Already authenticated by the interceptor; read again (cached) for the audit log.
        return self._auth.caller(context)

    async def ListBackends(
        self, request: admin_pb2.ListBackendsRequest, context: Ctx
    ) -> admin_pb2.ListBackendsResponse:
        backends = visible_backends(
            self._by(context), self._admin.list_backends(request.pool), self._admin.pools
        )
        return admin_pb2.ListBackendsResponse(backends=[backend_to_proto(b) for b in backends])

    async def GetBackend(
        self, request: admin_pb2.GetBackendRequest, context: Ctx
    ) -> types_pb2.Backend:
        backend = self._admin.get_backend(request.id)
        if not sees_backend(self._by(context), backend, self._admin.pools):
            raise NotFoundError(
                f"backend {request.id[:128]!r} not found: ListBackends shows the ids"
            )
        return backend_to_proto(backend)

    async def AddBackend(
        self, request: admin_pb2.AddBackendRequest, context: Ctx
    ) -> types_pb2.Backend:
        added = await self._admin.add_backend(
            backend_from_proto(request.backend), by=self._by(context)
        )
        return backend_to_proto(added)

    async def UpdateBackend(
        self, request: admin_pb2.UpdateBackendRequest, context: Ctx
    ) -> types_pb2.Backend:
        paths = mask_paths(request.update_mask, request.backend, BACKEND_FIELDS, "backend")
        updated = await self._admin.update_backend(
            backend_from_proto(request.backend), paths, by=self._by(context)
        )
        return backend_to_proto(updated)

    async def DeleteBackend(
        self, request: admin_pb2.DeleteBackendRequest, context: Ctx
    ) -> admin_pb2.DeleteBackendResponse:
        await self._admin.delete_backend(request.id, by=self._by(context))
        return admin_pb2.DeleteBackendResponse()

    async def SetBackendEnabled(
        self, request: admin_pb2.SetBackendEnabledRequest, context: Ctx
    ) -> types_pb2.Backend:
        updated = await self._admin.set_backend_enabled(
            request.id, request.enabled, by=self._by(context)
        )
        return backend_to_proto(updated)

    async def DrainBackend(
        self, request: admin_pb2.DrainBackendRequest, context: Ctx
    ) -> admin_pb2.DrainBackendResponse:
        message = await self._admin.drain(request.id, request.drain_s, by=self._by(context))
        return admin_pb2.DrainBackendResponse(message=message)

    async def ListPools(
        self, request: admin_pb2.ListPoolsRequest, context: Ctx
    ) -> admin_pb2.ListPoolsResponse:
        pools = visible_pools(self._by(context), self._admin.list_pools())
        return admin_pb2.ListPoolsResponse(pools=[pool_to_proto(p) for p in pools])

    async def GetPool(self, request: admin_pb2.GetPoolRequest, context: Ctx) -> types_pb2.Pool:
        pool = self._admin.get_pool(request.name)
        if not sees(self._by(context), pool.tenant):
            raise NotFoundError(f"pool {request.name[:128]!r} not found: ListPools shows the names")
        return pool_to_proto(pool)

    async def CreatePool(
        self, request: admin_pb2.CreatePoolRequest, context: Ctx
    ) -> types_pb2.Pool:
        created = await self._admin.create_pool(pool_from_proto(request.pool), by=self._by(context))
        return pool_to_proto(created)

    async def UpdatePool(
        self, request: admin_pb2.UpdatePoolRequest, context: Ctx
    ) -> types_pb2.Pool:
        paths = mask_paths(request.update_mask, request.pool, POOL_FIELDS, "pool")
        updated = await self._admin.update_pool(
            pool_from_proto(request.pool), paths, by=self._by(context)
        )
        return pool_to_proto(updated)

    async def DeletePool(
        self, request: admin_pb2.DeletePoolRequest, context: Ctx
    ) -> admin_pb2.DeletePoolResponse:
        await self._admin.delete_pool(request.name, by=self._by(context))
        return admin_pb2.DeletePoolResponse()

    async def GetPoolStatus(
        self, request: admin_pb2.GetPoolStatusRequest, context: Ctx
    ) -> admin_pb2.PoolStatus:
        return to_proto(self._admin.pool_status(request.name), admin_pb2.PoolStatus)

    async def ScalePool(self, request: admin_pb2.ScalePoolRequest, context: Ctx) -> types_pb2.Pool:
        scaled = await self._admin.scale_pool(request.name, request.replicas, by=self._by(context))
        return pool_to_proto(scaled)

    async def ListAgents(
        self, request: admin_pb2.ListAgentsRequest, context: Ctx
    ) -> admin_pb2.ListAgentsResponse:
        agents = [to_proto(a, admin_pb2.AgentInfo) for a in self._admin.list_agents()]
        return admin_pb2.ListAgentsResponse(agents=agents)

    async def ListReplicas(
        self, request: admin_pb2.ListReplicasRequest, context: Ctx
    ) -> admin_pb2.ListReplicasResponse:
        views = self._admin.list_replicas(request.pool)
        return admin_pb2.ListReplicasResponse(
            replicas=[to_proto(v, admin_pb2.ReplicaInfo) for v in views]
        )

    async def TailLogs(  # type: ignore[override]
        self, request: admin_pb2.TailLogsRequest, context: Ctx
    ) -> AsyncIterator[admin_pb2.LogLine]:
        lines = self._admin.tail_logs(request.replica_id, request.lines, request.follow)
        async for line in lines:
            yield admin_pb2.LogLine(replica_id=request.replica_id, line=line)

    async def GetUsage(
        self, request: admin_pb2.GetUsageRequest, context: Ctx
    ) -> admin_pb2.GetUsageResponse:
        by = self._by(context)
        if request.by_key or scope(by) is not None:
            # A tenant-admin sees what its keys spent, never other tenants' pools.
            keyed = await self._keys.usage(request.since, request.until, request.tenant, by)
            return admin_pb2.GetUsageResponse(
                rows=[to_proto(r, admin_pb2.UsageRow) for r in keyed],
                cost_usd=sum(r.cost_usd for r in keyed),
            )
        rows = await self._admin.usage(request.since, request.until, request.pool)
        return admin_pb2.GetUsageResponse(
            rows=[to_proto(r, admin_pb2.UsageRow) for r in rows],
            cost_usd=sum(r.cost_usd for r in rows),
        )

    async def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, context: Ctx
    ) -> admin_pb2.ListAuditEventsResponse:
        query = AuditQuery(
            since=request.since,
            until=request.until,
            actor=request.actor,
            object=request.object,
            before_id=request.before_id,
            limit=request.limit,
        )
        events = await self._admin.audit_events(query)
        return admin_pb2.ListAuditEventsResponse(
            events=[to_proto(e, admin_pb2.AuditEvent) for e in events]
        )

    async def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: Ctx
    ) -> admin_pb2.CreateTokenResponse:
        record, token = await self._admin.create_token(
            request.name, request.role, request.ttl_s, request.tenant, by=self._by(context)
        )
        return admin_pb2.CreateTokenResponse(
            info=to_proto(record, admin_pb2.TokenInfo), token=token
        )

    async def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: Ctx
    ) -> admin_pb2.ListTokensResponse:
        return admin_pb2.ListTokensResponse(
            tokens=[to_proto(r, admin_pb2.TokenInfo) for r in self._admin.list_tokens()]
        )

    async def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: Ctx
    ) -> admin_pb2.TokenInfo:
        record = await self._admin.revoke_token(request.id, by=self._by(context))
        return to_proto(record, admin_pb2.TokenInfo)

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Ctx
    ) -> admin_pb2.CreateApiKeyResponse:
        spec = from_proto(ApiKeyRecord, request.key, id="")
        view, secret = await self._keys.create(spec, time.time(), self._by(context))
        return admin_pb2.CreateApiKeyResponse(key=to_proto(view, types_pb2.ApiKey), secret=secret)

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Ctx
    ) -> admin_pb2.ListApiKeysResponse:
        views = self._keys.list_keys(request.tenant, self._by(context))
        return admin_pb2.ListApiKeysResponse(keys=[to_proto(v, types_pb2.ApiKey) for v in views])

    async def UpdateApiKey(
        self, request: admin_pb2.UpdateApiKeyRequest, context: Ctx
    ) -> types_pb2.ApiKey:
        paths = mask_paths(request.update_mask, request.key, KEY_FIELDS, "key")
        spec = from_proto(ApiKeyRecord, request.key, zeros=True)
        view = await self._keys.update(spec, paths, self._by(context))
        return to_proto(view, types_pb2.ApiKey)

    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Ctx
    ) -> types_pb2.ApiKey:
        view = await self._keys.revoke(request.id, self._by(context))
        return to_proto(view, types_pb2.ApiKey)

    async def PutTenant(
        self, request: admin_pb2.PutTenantRequest, context: Ctx
    ) -> types_pb2.Tenant:
        tenant = await self._keys.put_tenant(
            from_proto(TenantRecord, request.tenant), self._by(context)
        )
        return to_proto(tenant, types_pb2.Tenant)

    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: Ctx
    ) -> admin_pb2.ListTenantsResponse:
        return admin_pb2.ListTenantsResponse(
            tenants=[
                to_proto(t, types_pb2.Tenant, spent_usd=spent) for t, spent in self._keys.tenants()
            ]
        )

    async def DeleteTenant(
        self, request: admin_pb2.DeleteTenantRequest, context: Ctx
    ) -> admin_pb2.DeleteTenantResponse:
        await self._keys.delete_tenant(request.name, self._by(context))
        return admin_pb2.DeleteTenantResponse()

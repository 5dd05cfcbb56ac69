"""Who may call what: every RPC of the controller names the roles allowed to call it, here once.

Roles come from the caller's client certificate (llmpool.certs) or bearer token. On the admin
API admin > operator > viewer; agents may only call AgentService and gateways only
GatewayService. Health and reflection answer any authenticated caller. A method that is not in
the table is refused: a new RPC stays closed until someone decides who may call it.
"""

from __future__ import annotations

ADMIN = frozenset({"admin"})
OPERATOR = frozenset({"admin", "operator"})
VIEWER = frozenset({"admin", "operator", "viewer"})
AGENT = frozenset({"agent"})
GATEWAY = frozenset({"gateway"})
# Manages one tenant's API keys and sees its pools, backends and usage (controller/admin_keys.py
# and the admin's views narrow every answer to the tenant).
TENANT_ADMIN = "tenant-admin"
TENANT = frozenset({"admin", TENANT_ADMIN})
TENANT_VIEWER = VIEWER | {TENANT_ADMIN}
ANY = frozenset({"admin", "operator", "viewer", "agent", "gateway", "controller", TENANT_ADMIN})

_ADMIN_SERVICE = "/llmpool.v1.AdminService/"

RPC_ROLES: dict[str, frozenset[str]] = {
    **{
        _ADMIN_SERVICE + name: VIEWER
        for name in (
            "GetPoolStatus",
            "ListAgents",
            "ListReplicas",
            "ListTenants",
        )
    },
    # A tenant-admin sees its own tenant's (and shared) pools and backends, and its usage.
    **{
        _ADMIN_SERVICE + name: TENANT_VIEWER
        for name in ("ListBackends", "GetBackend", "ListPools", "GetPool", "GetUsage")
    },
    # Keys: an admin's for every tenant, a tenant-admin's for its own.
    **{
        _ADMIN_SERVICE + name: TENANT
        for name in ("CreateApiKey", "ListApiKeys", "UpdateApiKey", "RevokeApiKey")
    },
    # Day-to-day operations: traffic on and off, capacity, logs (which may quote prompts).
    **{
        _ADMIN_SERVICE + name: OPERATOR
        for name in (
            "SetBackendEnabled",
            "DrainBackend",
            "ScalePool",
            "TailLogs",
            "ListAuditEvents",
        )
    },
    # What runs where and who receives prompts.
    **{
        _ADMIN_SERVICE + name: ADMIN
        for name in (
            "AddBackend",
            "UpdateBackend",
            "DeleteBackend",
            "CreatePool",
            "UpdatePool",
            "DeletePool",
            "CreateToken",
            "ListTokens",
            "RevokeToken",
            "PutTenant",
            "DeleteTenant",
        )
    },
    "/llmpool.v1.AgentService/Connect": AGENT,
    "/llmpool.v1.GatewayService/WatchRouting": GATEWAY,
    "/llmpool.v1.GatewayService/ReportUsage": GATEWAY,
    "/llmpool.v1.GatewayService/AskHome": GATEWAY,
    "/llmpool.v1.GatewayService/ShareSends": GATEWAY,
    "/grpc.health.v1.Health/Check": ANY,
    "/grpc.health.v1.Health/Watch": ANY,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ANY,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": ANY,
}

# Roles a bearer token may carry: people's roles, not components'.
TOKEN_ROLES = ("admin", "operator", "viewer", TENANT_ADMIN)


def allowed(method: str, role: str) -> bool:
    return role in RPC_ROLES.get(method, frozenset())


def changes_state(method: str) -> bool:
    """Whether a call of `method` changes desired state (the audit log records those)."""
    roles = RPC_ROLES.get(method)
    return (
        method.startswith(_ADMIN_SERVICE)
        and roles is not None
        and roles not in (VIEWER, TENANT_VIEWER)
        and method != _ADMIN_SERVICE + "ListApiKeys"
    )

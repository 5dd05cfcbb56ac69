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
ANY = frozenset({"admin", "operator", "viewer", "agent", "gateway", "controller"})

_ADMIN_SERVICE = "/llmpool.v1.AdminService/"

RPC_ROLES: dict[str, frozenset[str]] = {
    **{
        _ADMIN_SERVICE + name: VIEWER
        for name in (
            "ListBackends",
            "GetBackend",
            "ListPools",
            "GetPool",
            "GetPoolStatus",
            "ListAgents",
            "ListReplicas",
            "GetUsage",
        )
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
        )
    },
    "/llmpool.v1.AgentService/Connect": AGENT,
    "/llmpool.v1.GatewayService/WatchRouting": GATEWAY,
    "/llmpool.v1.GatewayService/ReportUsage": GATEWAY,
    "/grpc.health.v1.Health/Check": ANY,
    "/grpc.health.v1.Health/Watch": ANY,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ANY,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": ANY,
}

# Roles a bearer token may carry: people's roles, not components'.
TOKEN_ROLES = ("admin", "operator", "viewer")


def allowed(method: str, role: str) -> bool:
    return role in RPC_ROLES.get(method, frozenset())


def changes_state(method: str) -> bool:
    """Whether a call of `method` changes desired state (the audit log records those)."""
    roles = RPC_ROLES.get(method)
    return method.startswith(_ADMIN_SERVICE) and roles is not None and roles != VIEWER

"""`llm-pool certs`: make the CA and the certificates that the control plane's mutual TLS uses."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llmpool.certs import ROLES, init_ca, issue
from llmpool.cliargs import env_option
from llmpool.errors import LLMPoolError
from llmpool.tls import DEFAULT_TLS_DIR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-pool certs",
        description="A private CA and per-component certificates for mutual TLS between the "
        "controller, agents, gateways and admin clients (grpcurl).",
    )
    sub = p.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="create ca.crt and ca.key (keep ca.key private)")
    env_option(init, "--dir", os.environ, "LLMPOOL_TLS_DIR", DEFAULT_TLS_DIR, "CA directory")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    iss = sub.add_parser(
        "issue",
        help="sign a certificate for one component or person",
        description="Writes NAME.crt and NAME.key. The role goes into the certificate: "
        "admin, operator and viewer may use the admin API (in that order of power), agent only "
        "AgentService, gateway only GatewayService; controller is the server's certificate.",
    )
    env_option(iss, "--dir", os.environ, "LLMPOOL_TLS_DIR", DEFAULT_TLS_DIR, "CA directory")
    iss.add_argument("--role", required=True, choices=ROLES)
    iss.add_argument("--name", default=None, help="identity in the certificate (default: the role)")
    iss.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP the controller is reached at (repeatable; localhost is always in)",
    )
    iss.add_argument("--out", default=None, help="write here instead of --dir (with ca.crt)")
    iss.add_argument("--days", type=int, default=825, help="validity in days")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "init":
            crt = init_ca(Path(args.dir), force=args.force)
            print(f"CA certificate: {crt}\nCA key: {Path(args.dir) / 'ca.key'} (keep it private)")
            return 0
        if not 1 <= args.days <= 3650:
            print("llm-pool certs: --days must be 1-3650", file=sys.stderr)
            return 2
        crt, key = issue(
            Path(args.dir),
            args.role,
            args.name,
            tuple(args.host),
            out=Path(args.out) if args.out else None,
            days=args.days,
        )
    except LLMPoolError as exc:
        print(f"llm-pool certs: {exc}", file=sys.stderr)
        return 2
    print(f"certificate: {crt}\nkey: {key}")
    return 0

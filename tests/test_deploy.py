"""deploy/: the systemd units, their env files and the example GPU config."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from agent.cli import build_parser as agent_parser
from agent.settings import SupervisorSettings
from controller.cli import build_parser as controller_parser
from gateway.settings import build_parser as gateway_parser
from gateway.workers import KILL_AFTER_S
from llmpool.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PREFIX_BIN = "/opt/llm-pool/.venv/bin/llm-pool"
ROLES = ("agent", "controller", "gateway")
PARSERS: dict[str, Callable[[Mapping[str, str]], argparse.ArgumentParser]] = {
    "agent": agent_parser,
    "controller": controller_parser,
    "gateway": gateway_parser,
}

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections to keys to every value given (systemd keys repeat, so no configparser)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}: no continuation lines expected: {line}"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {line}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def seconds(value: str) -> float:
    """systemd time spans as used here: '60', '60s', '2min', '1min 30s'."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "ms": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", ""), value
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def unit_path(role: str) -> Path:
    return DEPLOY / "systemd" / f"llm-pool-{role}.service"


def read_env_file(path: Path, *, commented: bool) -> dict[str, str]:
    """KEY=value lines; with `commented`, also the `#KEY=value` examples."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if commented and re.match(r"#[A-Z][A-Z0-9_]*=", line):
            line = line[1:]
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path.name}: {raw!r}"
        assert not value.startswith(("'", '"')), f"{path.name}: no quotes needed: {raw!r}"
        env[key] = value
    return env


def known_variables(role: str) -> set[str]:
    """Every variable the command's --help names."""
    text = PARSERS[role]({}).format_help()
    return set(re.findall(r"\bLLMPOOL_[A-Z0-9_]+", text))


def exec_args(unit: Unit, role: str) -> list[str]:
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[:2] == [PREFIX_BIN, role]
    return argv[2:]


@pytest.mark.parametrize("role", ROLES)
def test_unit_directives(role: str) -> None:
    unit = parse_unit(unit_path(role))
    assert set(unit) == {"Unit", "Service", "Install"}
    assert "network-online.target" in one(unit, "Unit", "After").split()
    assert "network-online.target" in one(unit, "Unit", "Wants").split()
    # Start limits belong in [Unit]; in [Service] systemd ignores them.
    assert int(one(unit, "Unit", "StartLimitBurst")) >= 1
    assert seconds(one(unit, "Unit", "StartLimitIntervalSec")) >= 60
    assert one(unit, "Install", "WantedBy") == "multi-user.target"

    service = unit["Service"]
    assert one(unit, "Service", "User") == "llm-pool"
    assert one(unit, "Service", "EnvironmentFile") == f"-/etc/llm-pool/{role}.env"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert 1 <= seconds(one(unit, "Service", "RestartSec")) <= 30
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "KillMode") == "mixed"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "ProtectKernelTunables": "yes",
        "RestrictSUIDSGID": "yes",
    }.items():
        assert one(unit, "Service", key) == value, key
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    assert "StartLimitIntervalSec" not in service
    assert "StartLimitBurst" not in service


def test_controller_writes_only_its_state_directory() -> None:
    unit = parse_unit(unit_path("controller"))
    assert one(unit, "Service", "StateDirectory") == "llm-pool/controller"
    args = exec_args(unit, "controller")
    # A flag, so that LLMPOOL_DATA_DIR in the env file cannot move the store off the one
    # writable path.
    assert args == ["--data-dir", "${STATE_DIRECTORY}"]
    assert controller_parser({}).parse_args(args).data_dir == "${STATE_DIRECTORY}"
    assert one(unit, "Service", "PrivateDevices") == "yes"


def test_agent_keeps_the_gpus_and_outlives_its_engines_kill_bound() -> None:
    unit = parse_unit(unit_path("agent"))
    service = unit["Service"]
    # Engines run in this unit: /dev/nvidia* must stay reachable and JIT code must run.
    assert service.get("PrivateDevices", ["no"]) == ["no"]
    # ProtectClock implies DeviceAllow=char-rtc, which older systemd turns into "no other
    # device".
    for key in (
        "DevicePolicy",
        "DeviceAllow",
        "ProtectClock",
        "MemoryDenyWriteExecute",
        "SystemCallFilter",
    ):
        assert key not in service, key
    assert exec_args(unit, "agent") == []
    stop = seconds(one(unit, "Service", "TimeoutStopSec"))
    assert stop > 2 * SupervisorSettings().kill_timeout_s
    # Caches of the engines (HF_HOME ...) point into the unit's writable directories.
    writable = ["/var/lib/" + one(unit, "Service", "StateDirectory")]
    writable.append("/var/cache/" + one(unit, "Service", "CacheDirectory"))
    for assignment in service["Environment"]:
        name, _, path = assignment.partition("=")
        assert any(path == w or path.startswith(w + "/") for w in writable), name


def test_gateway_stop_timeout_covers_its_graceful_timeout() -> None:
    unit = parse_unit(unit_path("gateway"))
    assert exec_args(unit, "gateway") == []
    stop = seconds(one(unit, "Service", "TimeoutStopSec"))
    default = gateway_parser({}).parse_args([]).graceful_timeout_s
    assert default == 30.0
    example = read_env_file(DEPLOY / "env" / "gateway.env.example", commented=True)
    configured = float(example["LLMPOOL_GATEWAY_GRACEFUL_TIMEOUT_S"])
    # Workers left after the grace period are killed KILL_AFTER_S later; then a margin.
    assert stop >= max(default, configured) + KILL_AFTER_S + 10


@pytest.mark.parametrize("role", ROLES)
def test_env_example_names_only_known_variables_with_valid_values(role: str) -> None:
    path = DEPLOY / "env" / f"{role}.env.example"
    env = read_env_file(path, commented=True)
    ours = {name for name in env if name.startswith("LLMPOOL_")}
    assert ours, path.name
    unknown = ours - known_variables(role)
    assert not unknown, f"{path.name}: not read by `llm-pool {role}`: {sorted(unknown)}"
    # The parser reads the values now and exits 2 on one it cannot use.
    args = exec_args(parse_unit(unit_path(role)), role)
    PARSERS[role](env).parse_args(args)
    PARSERS[role](read_env_file(path, commented=False)).parse_args(args)


def test_gpu_host_example_config_loads() -> None:
    config = load_config(DEPLOY / "examples" / "gpu-host-vllm.yaml")
    vllm = [pool for pool in config.pools if pool.template and pool.template.engine == "vllm"]
    assert vllm
    for pool in vllm:
        template = pool.template
        assert template is not None
        assert pool.replicas >= 1
        assert template.gpus == 1
        assert template.health_path == "/health"
        assert template.metrics_path == "/metrics"
        assert template.ready_timeout_s >= 300
        argv = template.command
        assert Path(argv[0]).name == "vllm" and argv[1] == "serve"
        assert "{model}" in argv
        assert argv[argv.index("--host") + 1] == "{host}"
        assert argv[argv.index("--port") + 1] == "{port}"


def real_llm_pool() -> str:
    beside = Path(sys.executable).parent / "llm-pool"
    found = str(beside) if beside.exists() else shutil.which("llm-pool")
    if found is None:
        pytest.skip("no llm-pool executable to point ExecStart at (install the package)")
    return found


@pytest.mark.parametrize("role", ROLES)
def test_systemd_analyze_verify(role: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on PATH")
    # verify insists that ExecStart's binary exists; /opt/llm-pool is not installed here, so a
    # copy points at this checkout's llm-pool and is otherwise the same file.
    text = unit_path(role).read_text()
    assert text.count(PREFIX_BIN) == 1
    copy = tmp_path / unit_path(role).name
    copy.write_text(text.replace(PREFIX_BIN, real_llm_pool()))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    # Other units on this machine may draw their own complaints; none may be about ours.
    ours = [line for line in output.splitlines() if copy.name in line or str(copy) in line]
    assert result.returncode == 0, output
    assert not ours, output


def test_edge_cloud_example_config_loads() -> None:
    config = load_config(DEPLOY / "examples" / "edge-cloud" / "pools.yaml")
    pools = {pool.name: pool for pool in config.pools}
    edge, cloud = pools["assistant"], pools["cloud"]
    assert edge.fallbacks == ["cloud"] and edge.prefer_zone and edge.spill_waiting > 0
    assert edge.template is not None and edge.template.engine == "llamacpp"
    [remote] = cloud.backends
    assert remote.kind == "openai" and remote.credential and remote.zone == "cloud"
    readme = (DEPLOY / "examples" / "edge-cloud" / "README.md").read_text()
    for flag in ("--zone edge", "--label zone=edge", "--secrets-dir", "GetUsage"):
        assert flag in readme

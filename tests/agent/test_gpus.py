"""GPU discovery with a fake NVML (present, absent, failing), --gpus, and the GPU env that
reaches the engine process."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agent.app import Agent, AgentOptions
from agent.gpus import (
    GpuInfo,
    Nvml,
    capacity,
    discover,
    launch_env,
    offered_gpus,
    parse_gpus,
    select,
)
from llmpool.backoff import Backoff
from llmpool.v1 import agent_pb2, types_pb2

from .conftest import PORT_RANGE, fast_settings

Until = Callable[..., Awaitable[Any]]
Cmd = Callable[..., tuple[str, ...]]
GIB = 1 << 30


@dataclass
class _Memory:
    total: int
    used: int


@dataclass
class _Util:
    gpu: int


class NVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


class FakeNvml(Nvml):
    """pynvml's calls over a list of GPUs; `fail_init` / `fail_on` make them raise."""

    def __init__(
        self, gpus: list[GpuInfo], fail_init: bool = False, fail_on: int | None = None
    ) -> None:
        self.gpus = gpus
        self.fail_init = fail_init
        self.fail_on = fail_on
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if index == self.fail_on:
            raise NVMLError("GPU is lost")
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes:
        return str(handle.uuid).encode()  # older pynvml returns bytes

    def nvmlDeviceGetName(self, handle: Any) -> str | bytes:
        return str(handle.name)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return _Memory(handle.memory_total_bytes, handle.memory_used_bytes)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        return _Util(handle.utilization_percent)


def h100(index: int) -> GpuInfo:
    return GpuInfo(
        index=index,
        uuid=f"GPU-{index:04d}",
        name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=80 * GIB,
        memory_used_bytes=index * GIB,
        utilization_percent=10 * index,
    )


def test_discover_lists_every_gpu_and_shuts_nvml_down() -> None:
    nvml = FakeNvml([h100(0), h100(1)])
    assert discover(nvml) == [h100(0), h100(1)]
    assert nvml.inits == 1 and nvml.shutdowns == 1


def test_discover_without_nvml_finds_none() -> None:
    assert discover(None) == []


def test_discover_when_init_fails_finds_none_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.gpus")
    assert discover(FakeNvml([h100(0)], fail_init=True)) == []
    (record,) = caplog.records
    assert record.levelno == logging.INFO and "NVML is not available" in record.message
    assert "Library Not Found" in record.__dict__["error"]


def test_discover_when_a_gpu_fails_finds_none_and_still_shuts_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.gpus")
    nvml = FakeNvml([h100(0), h100(1)], fail_on=1)
    assert discover(nvml) == []
    assert nvml.shutdowns == 1
    assert [r.levelno for r in caplog.records] == [logging.INFO]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("auto", None), ("none", ()), ("NONE", ()), ("0,1", (0, 1)), (" 3 , 1", (3, 1))],
)
def test_parse_gpus(text: str, expected: tuple[int, ...] | None) -> None:
    assert parse_gpus(text) == expected


@pytest.mark.parametrize(("text", "needle"), [("0,x", "not a GPU index"), ("1,1", "twice"),
                                              ("-1", "not a GPU index")])  # fmt: skip
def test_parse_gpus_refuses(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_gpus(text)


def test_select_keeps_the_override_order_and_unseen_gpus() -> None:
    found = [h100(0), h100(1), h100(2)]
    assert select(found, None) == found
    assert select(found, (2, 0)) == [h100(2), h100(0)]
    # NVML absent but the operator says GPU 1 is there: offered, with what is known.
    assert select([], (1,)) == [GpuInfo(index=1)]


async def test_offered_gpus_runs_nvml_off_the_loop_and_none_skips_it() -> None:
    nvml = FakeNvml([h100(0), h100(1)])
    assert await offered_gpus(None, lambda: nvml) == [h100(0), h100(1)]
    assert await offered_gpus((1,), lambda: nvml) == [h100(1)]
    assert await offered_gpus((), lambda: nvml) == []
    assert nvml.inits == 2
    assert await offered_gpus(None, lambda: None) == []


def test_launch_env_passes_host_numbers_and_pci_order(caplog: pytest.LogCaptureFixture) -> None:
    template = {"A": "1", "CUDA_VISIBLE_DEVICES": "7"}
    # Placement wins; its numbers are the host's own (Capacity.gpu_indices).
    env = launch_env(template, {"CUDA_VISIBLE_DEVICES": "2,0"}, (2, 0))
    assert env == {"A": "1", "CUDA_VISIBLE_DEVICES": "2,0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    # No GPU placement: the template's own value is left alone.
    assert launch_env(template, {}, (2, 0)) == template
    assert launch_env({}, {"CUDA_VISIBLE_DEVICES": ""}, (0,)) == {"CUDA_VISIBLE_DEVICES": ""}
    # A template's own device order wins.
    ordered = launch_env(
        {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}, {"CUDA_VISIBLE_DEVICES": "3"}, (3,)
    )
    assert ordered == {"CUDA_DEVICE_ORDER": "FASTEST_FIRST", "CUDA_VISIBLE_DEVICES": "3"}
    # Numbers the agent does not offer pass unchanged, with a warning (the engine then fails
    # visibly, with its own message).
    caplog.set_level(logging.WARNING, logger="agent.gpus")
    env = launch_env({}, {"CUDA_VISIBLE_DEVICES": "2"}, (0,))
    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    assert any("does not offer" in r.message for r in caplog.records)


def test_capacity_carries_host_numbers_memory_and_utilisation() -> None:
    gpus = [
        GpuInfo(
            index=3, memory_total_bytes=80 * GIB, memory_used_bytes=GIB, utilization_percent=50
        ),
        GpuInfo(index=1, memory_total_bytes=40 * GIB),
    ]
    offer = capacity(gpus, cpu_slots=4)
    assert (offer.gpus, offer.cpu_slots) == (2, 4)
    assert list(offer.gpu_indices) == [3, 1]
    assert list(offer.gpu_memory_bytes) == [80 * GIB, 40 * GIB]
    assert list(offer.gpu_memory_used_bytes) == [GIB, 0]
    assert list(offer.gpu_utilization) == [0.5, 0.0]


async def test_agent_offers_gpus_and_the_engine_sees_its_devices(
    fake_controller: Any,
    controller_port: int,
    fake_engine: Cmd,
    until: Until,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.app")
    nvml = FakeNvml([h100(0), h100(1), h100(2)])
    options = AgentOptions(
        controller=f"127.0.0.1:{controller_port}",
        agent_id="gpu-agent",
        port_low=PORT_RANGE[0],
        port_high=PORT_RANGE[1],
        cpu_slots=2,
        gpus=(2, 1),
        metrics_port=None,
    )
    agent = Agent(
        options,
        settings=fast_settings(),
        session_backoff=Backoff(base=0.05, cap=0.2, jitter=lambda: 0.0),
        nvml=lambda: nvml,
    )
    await agent.start()
    try:
        register = await fake_controller.expect("register")
        offered = [r.__dict__["gpu_index"] for r in caplog.records if r.message == "offering GPU"]
        assert offered == [2, 1]
        assert register.capacity.gpus == 2 and register.capacity.cpu_slots == 2
        assert list(register.capacity.gpu_memory_bytes) == [80 * GIB, 80 * GIB]
        assert list(register.capacity.gpu_indices) == [2, 1]

        command = fake_engine("--print-env", "CUDA_VISIBLE_DEVICES", "--print-env",
                              "CUDA_DEVICE_ORDER", "--print-env", "FROM_TEMPLATE")  # fmt: skip
        fake_controller.send(
            start=agent_pb2.StartReplica(
                command_id="c1",
                replica_id="r1",
                pool="p",
                template=types_pb2.ReplicaTemplate(
                    engine="vllm", command=list(command), env={"FROM_TEMPLATE": "yes"}, gpus=1
                ),
                # The controller hands out the host's numbers from Capacity.gpu_indices.
                env={"CUDA_VISIBLE_DEVICES": "2"},
            )
        )
        assert (await fake_controller.expect("result")).ok
        ring = agent.supervisor.logs("r1")
        await until(lambda: any("FROM_TEMPLATE" in line for line in ring.tail(20)), what="env")
        lines = ring.tail(20)
        assert "env CUDA_VISIBLE_DEVICES=2" in lines
        assert "env CUDA_DEVICE_ORDER=PCI_BUS_ID" in lines
        assert "env FROM_TEMPLATE=yes" in lines
    finally:
        await agent.stop()

"""GPU discovery through NVML (nvidia-ml-py), the --gpus override, and device numbering."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from llmpool.capacity import Capacity

log = logging.getLogger(__name__)

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
CUDA_DEVICE_ORDER = "CUDA_DEVICE_ORDER"


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML numbers it (PCI bus order); memory in bytes, utilisation in percent."""

    index: int
    uuid: str = ""
    name: str = ""
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0
    utilization_percent: int = 0


class Nvml(Protocol):
    """The part of pynvml the agent calls (a fake implements it in tests)."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def load_nvml() -> Nvml | None:
    """The pynvml module, or None (logged at info) when nvidia-ml-py is not installed."""
    try:
        return cast(Nvml, importlib.import_module("pynvml"))
    except ImportError as exc:
        log.info("no GPUs: nvidia-ml-py is not installed", extra={"error": str(exc)})
        return None


def discover(nvml: Nvml | None) -> list[GpuInfo]:
    """Every GPU NVML sees, or [] (logged once, at info) when NVML is absent or fails.
    Blocking: call it through asyncio.to_thread."""
    if nvml is None:
        return []
    try:
        nvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses, or OSError on odd hosts.
        log.info("no GPUs: NVML is not available", extra={"error": str(exc) or repr(exc)})
        return []
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total_bytes=int(memory.total),
                    memory_used_bytes=int(memory.used),
                    utilization_percent=int(util.gpu),
                )
            )
        return gpus
    except Exception as exc:
        log.info("no GPUs: NVML failed while listing them", extra={"error": str(exc) or repr(exc)})
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)


def parse_gpus(text: str) -> tuple[int, ...] | None:
    """--gpus: '' or 'auto' -> None (discover); 'none' -> (); '0,1' -> (0, 1). ValueError if bad."""
    value = text.strip().lower()
    if value in ("", "auto"):
        return None
    if value == "none":
        return ()
    indices: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"{part!r} is not a GPU index; use e.g. 0,1, none or auto")
        if int(part) in indices:
            raise ValueError(f"GPU {part} is listed twice")
        indices.append(int(part))
    return tuple(indices)


def select(found: Sequence[GpuInfo], override: tuple[int, ...] | None) -> list[GpuInfo]:
    """The GPUs the agent offers: all found, or those the override names (kept even when NVML
    did not see them, so a host without NVML can still offer GPUs)."""
    if override is None:
        return list(found)
    by_index = {g.index: g for g in found}
    return [by_index.get(i, GpuInfo(index=i)) for i in override]


async def offered_gpus(
    override: tuple[int, ...] | None, load: Callable[[], Nvml | None] = load_nvml
) -> list[GpuInfo]:
    """Discovers off the event loop (NVML calls block), then applies the override. With an
    override that names no GPU ('none'), NVML is not touched at all."""
    if override == ():
        return []
    found = await asyncio.to_thread(lambda: discover(load()))
    return select(found, override)


def launch_env(
    template_env: Mapping[str, str],
    placement_env: Mapping[str, str],
    devices: Sequence[int] | None,
) -> dict[str, str]:
    """The template's env with the placement's over it. The placement's CUDA_VISIBLE_DEVICES
    holds this host's GPU numbers (NVML's, which the agent offers in Capacity.gpu_indices), so
    CUDA is told to count in PCI bus order too, unless the template says otherwise. Numbers the
    agent does not offer (`devices`) are passed on, with a warning."""
    env = {**template_env, **placement_env}
    value = placement_env.get(CUDA_VISIBLE_DEVICES, "")
    if not value.strip():
        return env
    parts = [p.strip() for p in value.split(",")]
    if devices is not None and not all(p.isdigit() and int(p) in devices for p in parts):
        log.warning(
            "CUDA_VISIBLE_DEVICES names GPUs this agent does not offer; passed on unchanged",
            extra={"value": value, "offered": list(devices)},
        )
    env.setdefault(CUDA_DEVICE_ORDER, "PCI_BUS_ID")
    return env


def capacity(gpus: Sequence[GpuInfo], cpu_slots: int) -> Capacity:
    """What the agent offers: CPU slots and its GPUs by host number, with memory and
    utilisation (0..1) as last read."""
    return Capacity(
        gpus=len(gpus),
        cpu_slots=cpu_slots,
        gpu_indices=tuple(g.index for g in gpus),
        gpu_memory_bytes=tuple(g.memory_total_bytes for g in gpus),
        gpu_memory_used_bytes=tuple(g.memory_used_bytes for g in gpus),
        gpu_utilization=tuple(g.utilization_percent / 100.0 for g in gpus),
    )

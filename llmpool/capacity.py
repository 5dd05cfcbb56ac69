"""What an agent offers for placement: CPU slots and GPUs, with their use as last read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capacity:
    """Mirrors llmpool.v1.Capacity. GPUs by the host's device numbers (NVML, PCI bus order);
    the per-GPU tuples are in the order of gpu_indices."""

    gpus: int = 0
    cpu_slots: int = 0
    gpu_memory_bytes: tuple[int, ...] = ()
    gpu_indices: tuple[int, ...] = ()
    gpu_memory_used_bytes: tuple[int, ...] = ()
    # 0..1 per GPU.
    gpu_utilization: tuple[float, ...] = ()

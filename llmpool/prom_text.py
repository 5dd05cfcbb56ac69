"""Prometheus text format, read into plain samples (engines' /metrics, for their load and size)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


def parse_samples(text: str) -> dict[str, list[tuple[Labels, float]]]:
    """Sample name -> (labels, value) of every series; ValueError if the text is not Prometheus
    text format. Histogram buckets, _created and _count samples come through under their own
    names, so families nobody asks for cost nothing but the parse."""
    values: dict[str, list[tuple[Labels, float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                values.setdefault(sample.name, []).append((labels, float(sample.value)))
    except (ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"not Prometheus text format: {exc}") from exc
    return values

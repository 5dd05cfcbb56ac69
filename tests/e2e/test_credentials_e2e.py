"""Keys stay on the gateway's host: after a run against a keyed remote backend (a fake OpenAI API
that checks the key), no log line, metric, admin answer or store file holds the key, and the
fake never saw the client's own key. Real processes, mutual TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from google.protobuf.json_format import MessageToJson

from llmpool.v1 import admin_pb2
from tests.chaos.fakes import FakeMember
from tests.support import wait_for

pytestmark = pytest.mark.e2e

KEY = "sk-live-e2e-5f1c9a7b3d2e4f60"
CLIENT_KEY = "client-key-3a9d77e1"


@pytest.fixture()
def keyed() -> Iterator[FakeMember]:
    """A fake OpenAI API that answers only requests bearing KEY and keeps every header."""
    fake = FakeMember(key=KEY)
    fake.reply = "keyed hello"
    yield fake
    fake.close()


def test_no_key_leaves_the_gateway_host(
    tmp_path: Path, spawn: Any, ports: Any, cluster_of: Any, keyed: FakeMember
) -> None:
    config = tmp_path / "pools.yaml"
    config.write_text(
        "pools:\n  - name: remote\n    backends:\n"
        f"      - {{id: oai, url: '{keyed.url}', kind: openai, credential: prod}}\n"
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "prod").write_text(KEY + "\n")
    controller, gateway = f"127.0.0.1:{ports()}", f"127.0.0.1:{ports()}"
    data = tmp_path / "data"
    procs = [
        spawn("controller", "controller", "--listen", controller, "--data-dir", str(data),
              "--config", str(config), "--metrics-listen", "127.0.0.1:0",
              "--backend-allow", "127.0.0.1", "--log-level", "debug"),
        spawn("gateway", "gateway", "--listen", gateway, "--controller", controller,
              "--secrets-dir", str(secrets), "--log-level", "debug"),
    ]  # fmt: skip
    cluster = cluster_of(gateway=gateway, controller=controller)
    client = openai.OpenAI(base_url=cluster.base_url, api_key=CLIENT_KEY, max_retries=0)

    def served() -> bool:
        try:
            answer = client.chat.completions.create(
                model="remote", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.APIError:
            return False
        return answer.choices[0].message.content == "keyed hello"

    wait_for(served, 30, "the keyed backend served through the gateway")
    for _ in range(3):
        assert served()

    # Everything a person or a scraper can read.
    admin = cluster.admin()
    status = admin_pb2.GetPoolStatusRequest(name="remote")
    answers = [
        MessageToJson(admin.ListBackends(admin_pb2.ListBackendsRequest(), timeout=5)),
        MessageToJson(admin.ListPools(admin_pb2.ListPoolsRequest(), timeout=5)),
        MessageToJson(admin.GetPoolStatus(status, timeout=5)),
    ]
    assert '"credential": "prod"' in answers[0]
    gateway_metrics = httpx.get(f"http://{gateway}/metrics", timeout=5).text
    controller_log = procs[0].log_path.read_text()
    metrics_addr = next(
        line.split("metrics=")[1].split()[0]
        for line in controller_log.splitlines()
        if "controller listening" in line
    )
    controller_metrics = httpx.get(f"http://{metrics_addr}/metrics", timeout=5).text
    logs = [p.log_path.read_text() for p in procs]
    store = b"".join(f.read_bytes() for f in data.rglob("*") if f.is_file())
    for where, text in [
        ("admin answers", "\n".join(answers)),
        ("gateway metrics", gateway_metrics),
        ("controller metrics", controller_metrics),
        ("controller log", logs[0]),
        ("gateway log", logs[1]),
    ]:
        assert KEY not in text, f"the key is in the {where}"
        assert KEY[:12] not in text, f"part of the key is in the {where}"
    assert KEY.encode() not in store, "the key is in the controller's store"
    # The fake got our key on every request, and never the client's.
    assert keyed.headers and all(h["authorization"] == f"Bearer {KEY}" for h in keyed.headers)
    assert all(CLIENT_KEY not in json.dumps(h) for h in keyed.headers)

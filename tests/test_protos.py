"""The committed gRPC code in llmpool/v1 is exactly what `make protos` writes from protos/."""

from __future__ import annotations

from pathlib import Path

from llmpool import protogen


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in protogen.generate(tmp_path)}
    committed_dir = protogen.REPO_ROOT / "llmpool" / "v1"
    committed = {p.name: p.read_text() for p in committed_dir.glob("*_pb2*")}
    assert fresh, "protoc wrote nothing"
    assert sorted(fresh) == sorted(committed), "run `make protos`: generated files differ"
    stale = [name for name, text in fresh.items() if committed[name] != text]
    assert not stale, f"run `make protos`: these files drifted from protos/: {stale}"


def test_every_proto_has_a_package_and_docs() -> None:
    for proto in protogen.proto_files():
        text = proto.read_text()
        assert "package llmpool.v1;" in text, proto
        assert text.startswith("//"), f"{proto.name} needs a first-line comment saying what it is"

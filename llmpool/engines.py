"""Engine kinds every service knows by name (config, controller validation, agent adapters)."""

from __future__ import annotations

# "llamacpp" is llama-cpp-python's llama_cpp.server; "llama-server" is llama.cpp's own binary;
# "openai" is any OpenAI-compatible server started by the template's command.
ENGINES: tuple[str, ...] = ("sim", "llamacpp", "llama-server", "vllm", "sglang", "tgi", "openai")

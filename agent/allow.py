"""What an agent agrees to run: engine commands from an allow-list, never a shell.

The controller (or whoever holds an admin certificate) says what to run; the agent decides
whether it will. A command runs when its argv begins with an allowed prefix: the built-in
engines' own commands, plus the prefixes the agent's operator adds (`--allow-engine`). Shells
and wrappers that run other programs are refused even when listed, and so are environment
variables that make a permitted program load foreign code (LD_PRELOAD, PYTHONPATH, ...).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The built-in engines' default commands (agent/engines.py), as argv prefixes. "{python}" is
# the agent's own interpreter: only with these modules, never with -c or a script path.
BUILTIN_PREFIXES: tuple[tuple[str, ...], ...] = (
    ("{python}", "-m", "llmpool.cli", "sim-engine"),
    ("{python}", "-m", "llama_cpp.server"),
    ("llama-server",),
    ("vllm", "serve"),
    ("python3", "-m", "sglang.launch_server"),
    ("text-generation-launcher",),
)

# Programs whose job is to run other programs or code given as arguments.
_WRAPPERS = frozenset(
    {
        "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "busybox",
        "env", "sudo", "su", "doas", "nohup", "setsid", "xargs", "timeout", "nice", "ionice",
        "chroot", "script", "stdbuf", "flock", "watch", "strace", "ltrace", "gdb",
    }
)  # fmt: skip

# Environment that makes a program load code from elsewhere, or changes which program runs.
_ENV_NAMES = frozenset(
    {
        "PATH", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONINSPECT",
        "PYTHONEXECUTABLE", "PYTHONBREAKPOINT", "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "PS4",
        "NODE_OPTIONS", "PERL5OPT", "PERL5LIB", "RUBYOPT", "GCONV_PATH", "HOSTALIASES",
        "LOCPATH", "NLSPATH", "MALLOC_CONF",
    }
)  # fmt: skip
_ENV_PREFIXES = ("LD_", "DYLD_")


def parse_entries(texts: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """`--allow-engine` values ("/opt/vllm/bin/vllm serve", "{python} -m my.server") as argv
    prefixes; ValueError for an empty one or one that starts with a shell."""
    out = []
    for text in texts:
        words = tuple(shlex.split(text))
        if not words:
            raise ValueError("an empty --allow-engine entry allows nothing; remove it")
        if _is_wrapper(words[0]):
            raise ValueError(
                f"--allow-engine {text!r}: {words[0]} runs other programs; list the engine "
                "itself instead"
            )
        if words[0] != "{python}" and "/" in words[0] and not os.path.isabs(words[0]):
            raise ValueError(f"--allow-engine {text!r}: a path must be absolute")
        out.append(words)
    return tuple(out)


def _is_wrapper(program: str) -> bool:
    return os.path.basename(program) in _WRAPPERS


@dataclass(frozen=True)
class EngineAllowList:
    prefixes: tuple[tuple[str, ...], ...] = BUILTIN_PREFIXES

    @classmethod
    def with_extra(cls, extra: Sequence[tuple[str, ...]]) -> EngineAllowList:
        return cls(BUILTIN_PREFIXES + tuple(extra))

    def problem(self, command: Sequence[str], env: Mapping[str, str]) -> str | None:
        """Why this agent will not run `command` with `env`; None when it will. The command is
        the template's, placeholders unrendered ({python} stays {python})."""
        if not command:
            return "the command is empty"
        if _is_wrapper(command[0]):
            return (
                f"{command[0]} runs other programs (a shell or wrapper): templates run engine "
                "executables directly"
            )
        for name in env:
            if name in _ENV_NAMES or name.startswith(_ENV_PREFIXES):
                return (
                    f"template env {name} changes what code the engine loads; this agent does "
                    "not pass it"
                )
        argv = tuple(command)
        for prefix in self.prefixes:
            if argv[: len(prefix)] == prefix:
                return None
        shown = " ".join(shlex.quote(a) for a in argv[:4])
        return (
            f"{shown}{' ...' if len(argv) > 4 else ''} is not an engine this agent may run; its "
            "operator can allow it with --allow-engine (LLMPOOL_AGENT_ALLOW_ENGINES)"
        )

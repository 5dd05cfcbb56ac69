"""API keys for remote backends, by name, from this gateway's own host: the environment
(LLMPOOL_CREDENTIAL_<NAME>) or a secrets directory (a file per credential, named for it). The
controller and snapshots only ever carry the name. Files are re-read when they change."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

ENV_PREFIX = "LLMPOOL_CREDENTIAL_"
# Bounds on the secrets directory: a key is short, and so is the list.
MAX_FILES = 1000
MAX_BYTES = 16 * 1024


def env_name(credential: str) -> str:
    """openai-prod -> LLMPOOL_CREDENTIAL_OPENAI_PROD."""
    return ENV_PREFIX + "".join(c if c.isalnum() else "_" for c in credential.upper())


class Credentials:
    """name -> key. get() is a dict lookup (the hot path); refresh() re-reads the directory
    off the event loop and calls on_change when the set of keys changed."""

    def __init__(
        self,
        env: Mapping[str, str],
        secrets_dir: Path | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._env = {k: v.strip() for k, v in env.items() if k.startswith(ENV_PREFIX) and v.strip()}
        self._dir = secrets_dir
        self._files: dict[str, str] = {}
        self._seen: dict[str, tuple[int, int]] = {}
        self._on_change = on_change
        # Credentials asked for and not found, so that each is logged once.
        self._missing: set[str] = set()

    def get(self, name: str) -> str | None:
        """The key named `name`: a file in the secrets directory first, then the environment."""
        found = self._files.get(name)
        if found is None:
            found = self._env.get(env_name(name))
        return found

    def has(self, name: str) -> bool:
        """Whether a member with this credential can be sent to (no credential: yes). Logs a
        missing one the first time it is asked for."""
        if not name or self.get(name) is not None:
            return True
        if name not in self._missing:
            self._missing.add(name)
            where = f"{env_name(name)} or {self._dir}/{name}" if self._dir else env_name(name)
            log.warning(
                "credential not found: members that need it are left out of routing here",
                extra={"credential": name, "looked_in": where},
            )
        return False

    def missing(self) -> int:
        """Credentials asked for and not found now (a gauge)."""
        return sum(1 for name in self._missing if self.get(name) is None)

    async def refresh(self) -> bool:
        """Re-reads changed files in the secrets directory; True (and on_change) if keys changed."""
        if self._dir is None:
            return False
        found = await asyncio.to_thread(_scan, self._dir, dict(self._seen), dict(self._files))
        files, seen = found
        changed = files != self._files
        self._files, self._seen = files, seen
        if changed:
            self._missing = {n for n in self._missing if self.get(n) is None}
            log.info("credentials re-read", extra={"credentials": len(files)})
            if self._on_change is not None:
                self._on_change()
        return changed

    async def watch(self, interval_s: float = 2.0) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("reading the secrets directory failed; keeping the keys read before")
            await asyncio.sleep(interval_s)


def _scan(
    directory: Path, seen: dict[str, tuple[int, int]], files: dict[str, str]
) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """(name -> key, name -> (mtime_ns, size)) for the directory's regular files; unchanged
    files are not read again. Runs in a thread."""
    keys: dict[str, str] = {}
    stamps: dict[str, tuple[int, int]] = {}
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)[:MAX_FILES]
    except FileNotFoundError:
        return {}, {}
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        st = entry.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if seen.get(entry.name) == stamp and entry.name in files:
            keys[entry.name] = files[entry.name]
        elif st.st_size <= MAX_BYTES:
            value = Path(entry.path).read_text(errors="replace").strip()
            if value:
                keys[entry.name] = value
        stamps[entry.name] = stamp
    return keys, stamps

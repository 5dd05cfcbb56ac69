"""`python -m bench.pick_count`: instructions one prefix_aware pick costs, counted by callgrind.

Wall time on a shared VM moves 2x between runs of the same code; instructions do not. Runs this
module under `valgrind --tool=callgrind` twice, warming the same index with the same requests,
once picking N more and once none: the difference over N is a pick's count. The policy's clock
moves 0.5 ms a pick, so every run makes the same decisions (with the system clock the count of
a 32k-token pick moved 10% between runs of the same code: the backlog's drain depends on time).
Needs valgrind (Debian's `valgrind`); a bench for choosing between changes, not a test.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.pick import context, members
from gateway.policies import PickContext, PolicyRegistry
from llmpool.clock import FakeClock

MODES = ("chat", "unique", "long")


class _StepClock(FakeClock):
    """Moves 0.5 ms each time it is read."""

    def monotonic(self) -> float:
        self.advance(0.0005)
        return super().monotonic()


def _requests(mode: str, rng: random.Random, count: int) -> list[PickContext]:
    vocab = ["".join(rng.choices("abcdefghij", k=rng.randint(2, 9))) for _ in range(5000)]

    def text(chars: int) -> str:
        return " ".join(rng.choices(vocab, k=chars // 5 + 10))[:chars]

    pool = members(random.Random(5))
    in_flight = {m.id: rng.randint(0, 8) for m in pool[::3]}
    shared: list[str] = []  # system prompts the requests share (none: unique prompts)
    question = 4096
    if mode == "chat":
        shared, question = [text(3072) for _ in range(256)], 1024
    elif mode == "long":
        shared, question = [text(120 * 1024) for _ in range(64)], 8192
    out = []
    for _ in range(count):
        messages = [{"role": "user", "content": text(question)}]
        if shared:
            messages.insert(0, {"role": "system", "content": rng.choice(shared)})
        out.append(context({"model": "m", "messages": messages}, in_flight))
    return out


def _inner(mode: str, built: int, picked: int) -> None:
    """Builds `built` requests (the same in both runs) and picks the first `picked`."""
    pool = members(random.Random(5))
    policy = PolicyRegistry(clock=_StepClock(), rng=random.Random(5)).build("prefix_aware")
    policy.on_members(pool)
    policy.on_snapshot(pool)
    for ctx in _requests(mode, random.Random(7), built)[:picked]:
        policy.pick(pool, ctx)


def _count(mode: str, built: int, picked: int, out: Path) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.pick_count",
        "--inner",
        mode,
        str(built),
        str(picked),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pick_count", description=__doc__)
    p.add_argument("--inner", nargs=3, metavar=("MODE", "BUILT", "PICKED"), help=argparse.SUPPRESS)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--picks", type=int, default=200, help="counted picks per mode")
    args = p.parse_args(argv)
    if args.inner:
        mode, built, picked = args.inner
        _inner(mode, int(built), int(picked))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    warm = {"chat": 1000, "unique": 1000, "long": 300}
    with tempfile.TemporaryDirectory(prefix="llmpool-pick-count-") as tmp:
        for mode in args.modes:
            built = warm[mode] + args.picks
            none = _count(mode, built, warm[mode], Path(tmp, f"{mode}.0"))
            some = _count(mode, built, built, Path(tmp, f"{mode}.n"))
            print(f"prefix_aware, {mode}: {(some - none) // args.picks:,} instructions a pick")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

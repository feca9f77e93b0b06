"""Run benchmarks and print their tables.

    python -m bench            # every bench/bench_*.py
    python -m bench rle metric # only those

Each ``bench/bench_<name>.py`` defines ``main() -> None`` that prints a Markdown table.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(p.stem[len("bench_"):] for p in here.glob("bench_*.py"))
    for name in names:
        print(f"\n## bench {name}\n", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"bench.bench_{name}").main()
        print(f"\n({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run benchmarks and print their tables.

    python -m bench            # every bench/bench_*.py
    python -m bench rle metric # only those

Each ``bench/bench_<name>.py`` defines ``main() -> None`` that prints a Markdown table; so do the
modules named in ``EXTRA`` (benchmarks that are also run on their own, e.g. by ``cellseg cv``).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


# name -> module of benchmarks that are not bench_<name>.py
EXTRA: dict[str, str] = {"plain_unet": "bench.plain_unet",
                         "plain_unet_oracle": "bench.plain_unet:main_oracle"}


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted([p.stem[len("bench_"):] for p in here.glob("bench_*.py")] + list(EXTRA))
    for name in names:
        print(f"\n## bench {name}\n", flush=True)
        t0 = time.perf_counter()
        module, _, func = EXTRA.get(name, f"bench.bench_{name}").partition(":")
        getattr(importlib.import_module(module), func or "main")()
        print(f"\n({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Keep every core busy (one spinning process per core) until stopped: the load under which the test suite is
shown to pass on a 2-core machine (docs/testing.md).

    python bench/busy.py &   # then run the tests; kill %1 afterwards
"""

from __future__ import annotations

import multiprocessing
import os


def spin() -> None:
    while True:
        pass


def main() -> None:
    workers = [multiprocessing.Process(target=spin, daemon=True) for _ in range(os.cpu_count() or 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()

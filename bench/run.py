#!/usr/bin/env python3
"""Run the ipcfast benchmark from the source tree.

    python bench/run.py            # full run (several minutes)
    python bench/run.py --quick    # under a minute
    python bench/run.py --help

Same as ``python -m ipcfast bench``; the code lives in python/ipcfast/_bench/
so an installed package can run it too. This script points the harness at
this checkout's csrc/ and bench/*.c for the C programs.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    from ipcfast._bench import main
except ImportError as exc:  # pragma: no cover - guidance only
    sys.exit(f"cannot import ipcfast ({exc}): install it first, e.g. pip install -e {os.path.dirname(HERE)}")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], source_root=os.path.dirname(HERE)))

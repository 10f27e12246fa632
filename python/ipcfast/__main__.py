"""``python -m ipcfast COMMAND``: command-line entry points.

* ``bench [--quick] [--out DIR] ...``: the benchmark (see ipcfast._bench and
  bench/README.md in the source tree).
* ``demo``: run a server and a client doing real requests (ipcfast.demo).
"""

from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: python -m ipcfast COMMAND [ARGS]

commands:
  bench [--quick] [--out DIR] [...]   run the benchmark (bench --help for options)
  demo                                run a server and a client doing real requests
"""


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "bench":
        from ._bench import main as bench_main

        return bench_main(rest)
    if command == "demo":
        from .demo import main as demo_main

        return demo_main()
    print(f"unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

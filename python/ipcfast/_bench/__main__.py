"""``python -m ipcfast._bench [OPTIONS]`` runs the benchmark;
``python -m ipcfast._bench child IMPL MODE ADDR ...`` is one of its processes."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "child":
    from .child import child_main

    child_main(sys.argv[2:])
else:
    from .cli import main

    sys.exit(main(sys.argv[1:]))

"""The ipcfast benchmark harness (``python -m ipcfast bench``, ``bench/run.py``).

Every implementation is measured as a pair of processes, a server and one or
more clients, exchanging echo requests; peers.py lists them (the C floor, the
C core, ipcfast native and pure, a hand-written Python socket server,
multiprocessing.connection, pyzmq, iceoryx2 with events and busy-polling,
gRPC over a Unix socket).

Rounds are interleaved (every implementation once per round, in a fixed
order, then the next round), in two placements: pinned (every process of the
pair on one CPU) and split (server on one CPU, clients on another). Figures per
round: round-trip latency samples for each size, requests/s with 1, 4, 16
concurrent client processes and the CPU time each side used per request.
Summary: the median of the per-round medians, p99 over all samples, and ratios
to the floor and to ipcfast native measured in the same round.

Modules: profiles (what is measured, the targets), peers (one adapter per
implementation), child (the server and client processes), harness (running
them), stats (typed results, summaries, target checks), report (Markdown,
JSON, plot), cli (the command line).
"""

from .cli import main

__all__ = ["main"]

"""The proxy benchmark behind ``make bench``: Weft next to nginx and Envoy on this machine.

Run it from the repository root as ``python -m bench.run`` (``--quick`` for a smoke run of well
under a minute, ``--long`` for the five-million-request memory run, ``--markdown`` for the table
in ``docs/benchmarks.md``). One run starts a fast backend (nginx), then for each case -- the backend
reached directly, through ``weft proxy``, through nginx and through Envoy, each a keep-alive reverse
proxy with one worker -- measures throughput and latency at saturation and at a fixed rate (wrk),
the proxy's CPU time per request and its memory (from ``/proc``), and the memory cost of streaming a
large body in each direction. Raw results go to ``bench/results/<timestamp>.json``. HTTP/2 and
gRPC cases (``--cases h2``, ``--cases grpc``: h2load and a grpcio client against an h2c nginx,
through weft and Envoy, single and as meshed pairs) run only when asked for.

Layout: :mod:`bench.settings` (validated run settings, cases and their protocols),
:mod:`bench.procfs` (CPU and memory of a process tree, connections to a port),
:mod:`bench.processes` (starting, watching and always stopping servers), :mod:`bench.targets`
(the backends and the cases, with their config templates in ``bench/templates``),
:mod:`bench.load` (wrk at saturation and paced; the phase around any load generator),
:mod:`bench.h2load` (HTTP/2 load), :mod:`bench.grpc_load` (the gRPC load client),
:mod:`bench.h2client` (the HTTP/2 readiness request), :mod:`bench.stream` (the large-body
client), :mod:`bench.model` and :mod:`bench.report` (results, targets, tables) and
:mod:`bench.run` (the command line and the sequence of phases).

Not for: CI or pass/fail testing. Figures depend on the machine and its neighbours; the targets
are reported, never asserted. All traffic stays on 127.0.0.1.
"""

"""The proxy benchmark behind ``make bench``: Weft next to nginx and Envoy on this machine.

Run it from the repository root as ``python -m bench.run`` (``--quick`` for a smoke run of well
under a minute, ``--long`` for the five-million-request memory run, ``--markdown`` for the table
in ``docs/benchmarks.md``). One run starts a fast backend (nginx), then for each case -- the backend
reached directly, through ``weft proxy``, through nginx and through Envoy, each a keep-alive reverse
proxy with one worker -- measures throughput and latency at saturation and at a fixed rate (wrk),
the proxy's CPU time per request and its memory (from ``/proc``), and the memory cost of streaming a
large body in each direction. Raw results go to ``bench/results/<timestamp>.json``.

Layout: :mod:`bench.settings` (validated run settings), :mod:`bench.procfs` (CPU and memory of a
process tree), :mod:`bench.processes` (starting, watching and always stopping servers),
:mod:`bench.targets` (the backend and the cases, with their config templates in
``bench/templates``), :mod:`bench.load` (wrk at saturation and paced), :mod:`bench.stream` (the
large-body client), :mod:`bench.model` and :mod:`bench.report` (results, targets, tables) and
:mod:`bench.run` (the command line and the sequence of phases).

Not for: CI or pass/fail testing. Figures depend on the machine and its neighbours; the targets
are reported, never asserted. All traffic stays on 127.0.0.1.
"""

"""The ingest benchmark (`python -m benchmarks.ingest`): what the real pgod daemon costs next to
one plain `llvm-profdata merge`. Its overview and command line are in `__main__`; its parts:

- `benchmarks.ingest.files`: the programs built for it and the raw files made from their runs,
  and the baseline, one `llvm-profdata merge` over the same files;
- `benchmarks.ingest.scenarios`: the scenarios (small, large and trickling files, idle, a backlog
  at start) and their figures;
- `benchmarks.ingest.report`: the table printed from those figures.

The daemon it measures is `testbed.measured.MeasuredDaemon`, on a `testbed.bus.PrivateBus`.
"""

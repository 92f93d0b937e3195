"""pgod's demo: the closed loop on the Lua 5.4 interpreter. Run ``python -m demo`` (``make demo``).

The steps live in modules of their own as importable functions (``demo.loop.closed_loop`` runs
steps a-e; ``benchmarks/pgo.py`` reuses them): ``demo.common`` (constants, output, the demo-state
folder), ``demo.sources``, ``demo.nixbuild``, ``demo.daemon``, ``demo.training``, ``demo.loop``,
``demo.measure``, ``demo.manual`` (PGO by hand), and ``demo.__main__`` (the report and ``main``).
"""

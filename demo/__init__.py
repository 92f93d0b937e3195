"""pgod's demo: the closed loop on the Lua 5.4 interpreter. Run ``python -m demo`` (``make demo``).

The steps live in ``demo.__main__`` as importable functions (``benchmarks/pgo.py`` reuses them).
"""

"""Merging raw profiles into each package's working profile, and counting each exactly once.

confined (one llvm-profdata run in a confined child, fed through a memfd), merger (which
parts are merged when, one batch per package at a time), plus the commit and the checked-bytes
cache.

May import: pgod.optimize, pgod.intake, pgod.state and the shared modules.
"""

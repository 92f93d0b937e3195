"""Merging raw profiles into each package's working profile, and counting each exactly once.

batches (which parts are merged when, one batch per package at a time, culprits found by
halving), confined (one llvm-profdata run in a confined child, fed through a memfd), commit (the
one transaction that counts a raw profile), checked (the bytes ingest checked, kept for their
merge within a memory budget). DESIGN.md's exactly-once steps 3-5 are confined and commit.

May import: pgod.optimize, pgod.intake, pgod.state and the shared modules.
"""

"""From a name in the spool to a row that waits for its merge: the hostile side of pgod.

cycle (the engine's intake step, which drives the rest), spool (the inotify watcher), fair (the per-uid share of each cycle), squatting (names held by
others), claim (taking a file out of the spool, bounded), sparse and room (what a file really
holds; whether the state's filesystem has room), profraw (the raw profile's framing, checked
before llvm-profdata sees it), attribution (build-id to package, with pyelftools), ingest
(checking, recording and staging what was claimed).

May import: pgod.state and the shared modules. Never the merge, the optimizer or the daemon.
"""

"""What pgod keeps, and how it finds it again after a crash.

db (the SQLite schema, through SQLAlchemy), layout (the state folder's subfolders, who owns
them, the staging of claimed files), history (merges, contributions and tallies kept for status
and the report), recovery (what a stop left half-done, finished at start), failpoints (crash
points the tests set).

May import: the shared modules at pgod/'s top only. Everything in the daemon builds on it.
"""

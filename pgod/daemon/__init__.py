"""The `pgod` program: wiring, the one worker thread, and the D-Bus face.

main (the entry point: configuration, trust check, wiring), engine (the worker loop that does
every state change), service and dbus_dispatch (the D-Bus object and its bounded dispatch),
status (the status documents), trust (who may own what the daemon runs), heap (allocator
settings taken at start).

May import: every other daemon layer (merge, optimize, intake, state) and the shared modules;
nothing imports it back.
"""

"""The `pgoctl` program: a D-Bus client and its text, JSON and notifications.

main (the command line), client (the calls), render (tables and bars), watch (the live view),
notify_agent, notify and notify_record (the per-user desktop notifications).

May import: the shared modules, and pgod.report for `pgoctl report`. Never the daemon's code:
`pgoctl status` loads neither SQLAlchemy nor pyelftools (tests/test_layers.py).
"""

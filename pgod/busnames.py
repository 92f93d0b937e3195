"""The D-Bus names of pgod's interface, version 1: bus name, object path and interface change together.

A module of its own, with no imports, so pgoctl can name the daemon without loading the
daemon's code (SQLAlchemy and the rest cost a command-line call most of a second).
"""

BUS_NAME = "org.pgod.Daemon1"
OBJECT_PATH = "/org/pgod/Daemon1"
INTERFACE = "org.pgod.Daemon1"

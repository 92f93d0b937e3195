"""What pgod and pgoctl agree on, and nothing else: the D-Bus names, the exit codes and the
words of the status documents that clients read (docs/interfaces.md describes each).

It imports nothing, so every side may import it: pgoctl names the daemon, reads its exit codes
and recognises its error texts without loading the daemon's code (SQLAlchemy and the rest cost
a command-line call most of a second).
"""

# The D-Bus names of pgod's interface, version 1: bus name, object path and interface change
# together.
BUS_NAME = "org.pgod.Daemon1"
OBJECT_PATH = "/org/pgod/Daemon1"
INTERFACE = "org.pgod.Daemon1"

# Exit codes of `pgoctl`; `pgod` itself exits 0, 1 or 2 (it is never unreachable or denied).
EXIT_OK = 0  # done
EXIT_FAILED = 1  # the operation failed
EXIT_USAGE = 2  # usage or configuration error
EXIT_UNREACHABLE = 3  # daemon not reachable
EXIT_DENIED = 4  # access denied

# How a package's last_error (and its "failed" event) begins when the context-sensitive stage's
# build could not be linked in place (optimize.activation; the notify agent words it).
PLACING_STAGE_BUILD = "putting the context-sensitive build in use"

"""Exit codes shared by `pgod` and `pgoctl` (CONTRACT.md)."""

EXIT_OK = 0  # done
EXIT_FAILED = 1  # the operation failed
EXIT_USAGE = 2  # usage or configuration error
EXIT_UNREACHABLE = 3  # daemon not reachable
EXIT_DENIED = 4  # access denied

"""The pieces the tests, the demo and the benchmarks share to run the real pgod around them.

Not installed with pgod: import it from the repository root (`python -m demo`, `python -m
benchmarks.x`; pytest gets the root through `pythonpath` in pyproject.toml). Nothing here fakes a
part of pgod: the daemon is the installed `pgod` entry point started as a process, on a
dbus-daemon of its own.

- `testbed.bus`: private dbus-daemons (session-type, and one configured like the system bus);
- `testbed.daemon`: one pgod process for a test (start, `pgoctl`, status, stop), `wait_for`,
  and the process helpers the demo and the benchmarks start their own pgod with;
- `testbed.config`: the TOML writer for pgod's config;
- `testbed.users`: running a command as uid nobody or another uid that can still read the
  caller's folders;
- `testbed.notifications`: dunst on Xvfb, a real notification server;
- `testbed.clangs`: the installed Debian clangs, compiling and running instrumented programs;
- `testbed.programs`: the workload program, its inputs, and raw profiles made by running it;
- `testbed.profiles`: `llvm-profdata` as a reference (one merge, `show`);
- `testbed.crafted`: raw profiles crafted to hurt llvm-profdata;
- `testbed.floods`: the scripts a flooding user runs;
- `testbed.measured`: pgod under measurement (/proc figures, its state database read-only).
"""

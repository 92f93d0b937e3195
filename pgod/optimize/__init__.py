"""From a profile to an optimized build in use: builds, the benchmark gate, activation.

optimizer (when a package is rebuilt, and what its build's outcome does), activation (what
is in use: the Nix profile, the stand-ins, the stage build put in place), adoption (each package
brought in line with the configuration at start), gcroots, operations (the error a refused
operation raises), stages (first and
context-sensitive PGO stages), builds and build_progress (one nix build, followed), gate (the
user's benchmark), nixstore (the store commands), substitution (the stand-in links in the
declared package's place).

May import: pgod.intake, pgod.state and the shared modules.
"""

"""What pgod reads out of merged profiles with llvm-profdata (bounded runs, parsed text) and the
figures computed from them that both the daemon (maturity, build order) and the report use."""

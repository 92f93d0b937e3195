"""pgod.report."""

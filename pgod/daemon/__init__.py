"""pgod.daemon."""

"""pgod.optimize."""

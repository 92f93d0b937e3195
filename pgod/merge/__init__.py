"""pgod.merge."""

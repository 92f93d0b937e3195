"""pgod.intake."""

"""pgod.ctl."""

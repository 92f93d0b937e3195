"""pgod.state."""

"""pgod: profile-guided optimization as a system service."""

__version__ = "0.1.0"

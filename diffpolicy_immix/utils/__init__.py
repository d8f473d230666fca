"""Small shared helpers (file writes)."""

from .io import atomic_path, atomic_write, find_stale_temps, remove_stale_temps

__all__ = ["atomic_path", "atomic_write", "find_stale_temps", "remove_stale_temps"]

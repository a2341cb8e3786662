"""The repository-only test harness: chaos driver and test helpers (not shipped)."""

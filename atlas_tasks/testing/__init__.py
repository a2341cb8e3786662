"""Shipped test support: provider conformance suite, fake cloud, Redis server fixture."""

"""Vast.ai provider: facade in :mod:`.provider`, HTTP client in :mod:`.client`, pure wire
translation in :mod:`.translate`."""

from atlas_tasks.providers.vast.provider import VastProvider

__all__ = ["VastProvider"]

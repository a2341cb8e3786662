"""RunPod provider: REST v2 pods, GPU catalog and extras, and serverless runtime jobs.

Layout: :mod:`.client` (the two HTTP APIs and their base URLs), :mod:`.translate` (pure
spec ↔ payload functions), one module per resource (:mod:`.pods`, :mod:`.serverless`,
:mod:`.extras`) and the :class:`RunPodProvider` facade.
"""

from atlas_tasks.providers.runpod.provider import RunPodProvider

__all__ = ["RunPodProvider"]

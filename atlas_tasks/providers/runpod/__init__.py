"""RunPod provider: REST v1 pods, serverless runtime jobs and the GraphQL GPU catalog.

Layout: :mod:`.client` (the three HTTP APIs and their base URLs), :mod:`.translate` (pure
spec ↔ payload functions), one module per resource (:mod:`.pods`, :mod:`.serverless`,
:mod:`.graphql`, :mod:`.extras`) and the :class:`RunPodProvider` facade.
"""

from atlas_tasks.providers.runpod.provider import RunPodProvider

__all__ = ["RunPodProvider"]

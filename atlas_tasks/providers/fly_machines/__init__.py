"""Fly.io Machines provider (``provider="fly"``): GPU and CPU Machines in one Fly app.

Layout, like :mod:`atlas_tasks.providers.runpod`: :mod:`.client` (the Machines API client,
the app and token resolution), :mod:`.translate` (pure spec ↔ payload functions),
:mod:`.machines` (create/get/list/stop/start/destroy and ``/wait``) and the
:class:`FlyMachinesProvider` facade. Facts: reference notes §4.1 (Machines API) and §6/§9
(``gpu_kind`` values).
"""

from atlas_tasks.providers.fly_machines.provider import FlyMachinesProvider

__all__ = ["FlyMachinesProvider"]

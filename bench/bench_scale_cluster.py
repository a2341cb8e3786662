"""The scale proof of ``bench_scale`` with the registry on a real 3-master Redis Cluster.

Same phases, sizes and figures as :mod:`bench.bench_scale` (see there), with:

* ``ATLAS_REDIS_URL=redis+cluster://...`` from
  :class:`atlas_tasks.testing.localstack.RedisClusterServer` (3 masters, the same tuning
  as ``RedisServer``): records, indexes, idle clocks, events, and the PEXPIRE baseline's
  plain keys all live on the cluster, reached through ``get_redis()``'s cluster client;
* Celery's broker, result backend and redbeat on a separate plain :class:`RedisServer`
  (``ATLAS_BROKER_URL``, ``ATLAS_RESULT_BACKEND``): Celery has no Redis Cluster transport;
* Redis CPU and memory summed over the 3 cluster nodes (the broker's Redis is not
  counted: it is not part of the registry).
"""

from __future__ import annotations

import importlib
from typing import Any

from atlas_tasks.testing.localstack import RedisServer
from bench.bench_scale import Params, measure, report_from
from bench.common import Report

NAME = "scale_cluster"


def _cluster_server_class() -> Any:
    module = importlib.import_module("atlas_tasks.testing.localstack")
    cls = getattr(module, "RedisClusterServer", None)
    if cls is None:
        raise RuntimeError(
            "scale_cluster needs atlas_tasks.testing.localstack.RedisClusterServer "
            "(issue 17, the 3-master cluster helper), which this tree does not have yet"
        )
    return cls


def run(quick: bool = False) -> Report:
    """Run the scale benchmark with the registry on a 3-master Redis Cluster."""
    params = Params.from_env(quick)
    cluster_cls = _cluster_server_class()
    broker = RedisServer().start()
    try:
        with cluster_cls() as nodes:
            m = measure(
                params,
                registry_url=nodes.url,
                broker_url=broker.url,
                result_backend=broker.url,
            )
            m["cluster_masters"] = len(nodes.nodes)
    finally:
        broker.cleanup()
    return report_from(NAME, m, ", 3-master cluster")

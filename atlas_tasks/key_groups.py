"""Hash-tag groups of the keys outside the session registry, and filling a key template
of a tagged keyspace.

On Redis Cluster every Lua script and every MULTI must touch keys of one hash slot
(:mod:`atlas_tasks.keyspace_names`, the tagged layout). The session registry is sharded
by session id (``Keyspace.shard_of``); every other multi-key step of atlas uses one of
these fixed groups (``keyspace().group(tag)``), chosen so that whatever one script
touches together shares the tag:

============  ==============================================================================
group         keys (and why together)
============  ==============================================================================
``jobs``      every job's record, poll lease, event stream and channel: the commit script
              updates the record, checks the lease and appends to the stream in one step.
              One group for all jobs rather than one per job: jobs are far fewer than
              sessions (one poll every 0.5-5 s each), a fixed tag needs no per-id keyspace
              objects, and the dashboard and ``/metrics`` find every record with one
              ``SCAN`` pattern on one node.
``fly``       every Fly app's streamer lock, cursor, subscriber set, logs stream and
              channel (one commit script touches all five), the deploy tickets' streams and
              the token lock and token entries (single-key, kept beside their app's keys).
              Fly apps are few and a streamer commits about once a second.
``rb.<...>``  one rate budget bucket and its pause key (both scripts read the pause and
              write the bucket): one group per (provider, API, key fingerprint), a set
              bounded by the configured keys, so the buckets spread over the cluster.
============  ==============================================================================

Keys that no script or MULTI touches together with another (the reaper's throttle and
stats, metrics counters written by ``HINCRBY``, leases, fault markers) keep the
namespace's untagged names: single-key commands and non-transactional pipelines may
span slots.

Audit (every multi-key step outside the session registry and quotas; the proof is
``tests/unit/test_cluster_slots.py``, run on one redis-server under a slot checker and on
a one-node cluster that refuses cross-slot steps itself):

=======================================  ===========================================  =======
step (module)                            keys                                         group
=======================================  ===========================================  =======
jobs.store ``_CREATE``,                  job record                                   jobs
``_REQUEST_CANCEL``, ``_BEGIN_SUBMIT``
jobs.store ``_CLAIM``, ``_ADVANCE``      job record, poll lease                       jobs
jobs.store ``_COMMIT``                   job record, lease, job event stream+channel  jobs
events ``_PUBLISH`` (topic job)          job event stream + channel                   jobs
events ``_PUBLISH`` (deploy, logs)       ticket / app event stream + channel          fly
events ``_PUBLISH`` (compute)            session event stream + channel               s<k>
fly.store ``_COMMIT``                    lock, cursor, subscribers, logs stream+chan  fly
fly.store ``_STOP``                      lock, cursor, logs stream + channel          fly
lease renew / release scripts            one lease key (job poll, streamer, token)    (its)
providers.budget ``ACQUIRE``/``OBSERVE`` bucket, pause key                            rb.<..>
metrics ``_OBSERVE`` (one per shard)     KEYS: shard's meter index; built from ARGV:  s<k>
                                         shard's record prefix + metrics prefix
=======================================  ===========================================  =======

Not multi-key (any slot): jobs.store ``summaries`` and metrics' scrape and request hook
(non-transactional pipelines of single-key commands), the reaper's throttle and stats
(``SET NX``, ``HINCRBY``, a non-transactional pipeline), ops_cli (single-key reads and
the session store's API), fly token storage (``GET``/``SET``/``DEL`` of one key),
faults (``SET NX``). No MULTI, ``RENAME``, ``MGET`` or union command remains in these
modules.

In the untagged layout (one Redis or Sentinel) ``group()`` is the namespace's keyspace
itself, so every name here is byte-for-byte what it was before the tagged layout.
"""

from __future__ import annotations

from typing import Final

from atlas_tasks.keyspace_names import Keyspace

#: Group of every serverless job's keys (record, lease, events).
JOBS_GROUP: Final = "jobs"
#: Group of every Fly key (logs streamer, deploy tickets, tokens).
FLY_GROUP: Final = "fly"


def budget_group(provider: str, api: str, fingerprint: str) -> str:
    """The group of one rate budget bucket and its pause key."""
    return f"rb.{provider}.{api}.{fingerprint}"


def fill(ks: Keyspace, template: str, **fields: object) -> str:
    """``template`` renamed into ``ks`` with its ``{placeholders}`` filled in: the same as
    ``ks.key(template).format(...)``, which escapes the literal hash tag of a tagged
    name (``atlas:{jobs}:job:{id}``) so ``str.format`` leaves it alone."""
    return ks.key(template).format(**fields)


__all__ = ["FLY_GROUP", "JOBS_GROUP", "budget_group", "fill"]

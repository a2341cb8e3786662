"""Every Redis key template, channel name, task name, queue and default of atlas_tasks.

One module owns these so that no two parts of the code can disagree on a key's shape,
and so an operator can read here what atlas_tasks keeps in Redis and for how long.
Keys are prefixed ``atlas:`` so a shared Redis can be inspected with ``SCAN atlas:*``.

**Namespaces** (``ATLAS_NAMESPACE``, :mod:`atlas_tasks.keyspace_names`). Every key
template here (and in the stores) is written in the default namespace's spelling,
``"atlas:..."``; code never uses a template directly but renames it for the deployment's
namespace first::

    from atlas_tasks.keyspace_names import keyspace
    ks = keyspace()                             # the current settings' namespace
    key = ks.key(C.SESSION_KEY).format(id=sid)  # "atlas:session:<id>", "staging:session:<id>"
    queue = ks.queue(C.QUEUE_COMPUTE)           # "compute", "staging.compute"

A store built for a namespace keeps its ``Keyspace`` (``self.ks``; the session store also
precomputed names in ``self.n``) and uses ``self.ks.key``. A new key: add its template
starting with ``atlas:`` and build it with ``ks.key(TEMPLATE)`` where it is used; Lua
scripts get every key through KEYS[] or a prefix in ARGV (never an ``atlas:`` literal).
``tests/unit/test_keyspace_names.py`` fails on an ``"atlas:"`` literal used outside a
module-level template or ``.key(...)``, and ``tests/integration/test_namespace_keys.py``
on any key a namespaced deployment writes outside its namespace. With the default
namespace every name is the template itself.

Nothing stored under these keys is a secret: tokens are kept as SHA-256 hashes and
anything that must travel in the clear to a worker is Fernet-encrypted first.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- namespace

#: The namespace of a deployment that sets no ``ATLAS_NAMESPACE``: key templates are
#: spelled in it, so its names are the templates unchanged.
DEFAULT_NAMESPACE = "atlas"
#: What a namespace may look like: a short token safe in Redis keys, queue and pod names.
#: No "-", ":" or ".": they separate it from the rest of a pod name (``<ns>-<id>``), key
#: (``<ns>:...``) or queue (``<ns>.compute``), so no namespace's names can start with
#: another's (``atlas-`` would otherwise match the pods of a namespace ``atlas-b``).
NAMESPACE_REGEX = r"^[a-z][a-z0-9_]{0,31}$"
#: The rule, as validation errors state it.
NAMESPACE_RULE = (
    "must be 1-32 lower-case letters, digits or '_', starting with a letter (e.g. 'staging')"
)

# --------------------------------------------------------------------------- Redis Cluster

#: ``ATLAS_REDIS_URL`` scheme of a Redis Cluster: ``redis+cluster://host:port[,host:port]``.
CLUSTER_URL_SCHEME = "redis+cluster://"
#: Registry shards on a cluster when ``ATLAS_REDIS_SHARDS`` is unset: enough to spread the
#: registry over 16 masters, few enough that a sweep's per-shard round trips stay cheap.
CLUSTER_DEFAULT_SHARDS = 16

# --------------------------------------------------------------------------- sessions

#: Hash with the session record (provider, compute id, status, user id, ttl, token hash...).
#: Its TTL is refreshed by touch() to ``idle_ttl + SESSION_RECORD_GRACE_MS`` so the reaper
#: can still read provider and compute id after the idle clock has run out.
SESSION_KEY = "atlas:session:{id}"

#: String key whose expiry *is* the idle clock: touch() sets its PX to idle_ttl_ms.
#: When Redis expires it, the keyspace listener enqueues a terminate (fast path).
SESSION_ALIVE_KEY = "atlas:alive:{id}"

#: Sorted set, member = session id, score = idle deadline (ms since epoch).
#: The reaper reads ``ZRANGEBYSCORE -inf now`` so a sweep costs what is due, not what is tracked.
DEADLINE_INDEX_KEY = "atlas:deadlines"

#: Set of every tracked session id (list_ids()).
SESSIONS_SET_KEY = "atlas:sessions"

#: Sorted set of write-ahead spawn intents: member = session id, score = intent deadline.
#: An intent covers a pod that may exist at the provider before the registry knows it.
INTENTS_KEY = "atlas:intents"

#: How far past now an idle session's deadline is pushed when the reaper or the keyspace
#: listener claims it: both skip sessions whose deadline is in the future, so one claim
#: wins. Short on purpose: if the claimer dies before its terminate is queued, the session
#: comes due again after this; a terminate that starts pushes it further (fence TTL).
IDLE_CLAIM_SLACK_MS = 10 * 1000

#: Idle terminates are batched: at most this many sessions per task, and the keyspace
#: listener waits at most IDLE_BATCH_WINDOW_MS to fill a batch. One task per session costs
#: ~5 ms of worker CPU; a batch amortises it (bench/RESULTS.md, idle-reap latency).
IDLE_BATCH_MAX = 50
IDLE_BATCH_WINDOW_MS = 50
#: Threads a terminate batch uses for its provider calls (I/O bound).
IDLE_BATCH_THREADS = 16

#: Termination fence: SET NX by whoever starts terminating a session, so duplicate
#: terminate requests (expiry, stop_tracked, reaper, redelivery) make one provider DELETE.
TERMINATE_FENCE_KEY = "atlas:fence:{id}"

#: Fence of one orphan pod's terminate (a lease held by the terminate task's id), so
#: duplicate orphan terminates from overlapping sweeps make one provider DELETE.
ORPHAN_FENCE_KEY = "atlas:fence:pod:{provider}:{compute_id}"

#: Pod-name → session id for pods created by a spawn, so the reaper can match orphans.
#: The default of ``ATLAS_REAP_NAME_PREFIX`` is ``<namespace>-`` (this, by default).
POD_NAME_PREFIX_DEFAULT = "atlas-"

#: Extra life of the session record beyond the idle deadline, so the reaper (or a slow
#: keyspace listener) still finds provider + compute id after the idle clock expired.
SESSION_RECORD_GRACE_MS = 24 * 3600 * 1000

#: How long a terminated session's record stays readable for info() before it expires.
TERMINATED_RECORD_TTL_MS = 3600 * 1000

#: How long a write-ahead intent covers a spawn that has not finished. A spawn task has a
#: hard time limit below this, so an intent older than this belongs to a dead spawn.
SPAWN_INTENT_TTL_MS = 10 * 60 * 1000

#: Per-session spawn lease (SET NX PX, value = the spawn task's id): a re-sent spawn never
#: runs beside a slow original, which could otherwise create a second pod.
SPAWN_LEASE_KEY = "atlas:spawn-lease:{id}"
#: How many times the reaper re-sends a spawn whose message was lost before giving up.
SPAWN_MAX_RESENDS = 3

#: How long a termination fence holds before another terminate may try again. Shorter
#: than the terminate task's retry window, so a crashed terminate is retried by the reaper.
TERMINATE_FENCE_TTL_MS = 60 * 1000

# --------------------------------------------------------------------------- cost meter

#: Sorted set: member = session id, score = "metered until" (ms, Redis time). The meter
#: charges a running session whole intervals past this watermark and moves it in the same
#: Lua step, so a redelivered or doubled meter task charges each session-minute once. An
#: ended session is charged its last partial interval (up to ``ended_at_ms``) and leaves.
METER_INDEX_KEY = "atlas:meter:sessions"
#: ``SET NX PX`` throttle of the meter task (two beats or a backlog: one scan per period).
METER_THROTTLE_KEY = "atlas:meter:throttle"
#: Period of the cost meter (``ATLAS_METER_INTERVAL_MS``): one ``cost`` event per session.
DEFAULT_METER_INTERVAL_MS = 60 * 1000
#: ``SET NX PX`` throttle of the billing reconciliation.
RECONCILE_THROTTLE_KEY = "atlas:meter:reconcile-throttle"
#: Hash session id → JSON ``{provider, at_ms, drift_usd, ratio}`` of the last billing
#: reconciliation (replaced as a whole by each one; read by ``/metrics``).
COST_DRIFT_KEY = "atlas:meter:drift"
#: A session whose accrued cost and billed cost differ by more than this fraction of the
#: billed cost counts as drifting (``atlas_cost_drift_sessions_total``).
COST_DRIFT_TOLERANCE = 0.01

# --------------------------------------------------------------------------- GPU-idle reaping

#: Hash: session id → first time (ms, Redis time) every GPU of it was seen below its
#: threshold. Cleared as soon as one GPU is above it, or utilisation is unknown.
GPU_IDLE_SINCE_KEY = "atlas:gpu-idle:since"
#: Set (one per registry shard, in the shard's slot): ids of sessions that opted in to
#: GPU-idle reaping at spawn (``gpu_idle_below_pct``/``gpu_idle_window_ms`` on the
#: record), added in the record's create step. Without a deployment-wide policy the
#: watch reads only this, not every tracked session; it prunes ids no longer tracked.
GPU_WATCH_INDEX_KEY = "atlas:gpu-idle:watch"
#: Set once the opt-in index was filled from the sessions recorded before it existed (an
#: upgrade with live opted-in sessions): the watch does that one full pass first.
GPU_WATCH_BACKFILLED_KEY = "atlas:gpu-idle:watch-backfilled"
#: ``SET NX PX`` throttle of the GPU-idle watch task.
GPU_WATCH_THROTTLE_KEY = "atlas:gpu-idle:throttle"
#: The terminating reason of a session reaped for idle GPUs.
GPU_IDLE_REASON = "gpu_idle"

# --------------------------------------------------------------------------- events

#: Pub/sub channel for one session's events (every web node and worker can subscribe).
EVENTS_CHANNEL = "atlas:events:{id}"

#: Pattern that matches every session's channel (monitoring, dashboards).
EVENTS_CHANNEL_PATTERN = "atlas:events:*"

#: Capped Redis Stream with one session's past events, replayed by subscribe().
EVENTS_STREAM_KEY = "atlas:events-log:{id}"

#: Event topics: name → (pub/sub channel template, replay stream template). "compute" is
#: a tracked session, "job" a serverless job, "deploy" a Fly deploy ticket, "logs" a Fly app.
EVENT_TOPICS = {
    "compute": (EVENTS_CHANNEL, EVENTS_STREAM_KEY),
    "job": ("atlas:job-events:{id}", "atlas:job-events-log:{id}"),
    "deploy": ("atlas:deploy-events:{id}", "atlas:deploy-events-log:{id}"),
    "logs": ("atlas:logs-events:{id}", "atlas:logs-events-log:{id}"),
}

#: Entries kept per event stream (XADD MAXLEN ~). Enough for a session's whole life.
EVENTS_STREAM_MAXLEN = 1000

#: How long an event stream lives after its last event.
EVENTS_STREAM_TTL_MS = 24 * 3600 * 1000

# --------------------------------------------------------------------------- mock cloud

#: Hash of mock computes when the mock provider keeps its state in Redis.
MOCK_COMPUTE_KEY = "atlas:mock:computes"
#: Hash of mock jobs when the mock provider keeps its state in Redis.
MOCK_JOBS_KEY = "atlas:mock:jobs"

# --------------------------------------------------------------------------- celery

TASK_SPAWN = "atlas.compute.spawn"
TASK_TERMINATE = "atlas.compute.terminate"
TASK_TERMINATE_BATCH = "atlas.compute.terminate_batch"
TASK_TERMINATE_ORPHAN = "atlas.compute.terminate_orphan"
TASK_REAP = "atlas.reaper.reap"
TASK_JOB_RUN = "atlas.jobs.run"
TASK_JOB_POLL = "atlas.jobs.poll"
TASK_FLY_DEPLOY = "atlas.fly.deploy"
#: Beat task caching each configured provider's GPU catalog prices for quota admission
#: (the price cache's keys are declared in :mod:`atlas_tasks.quotas.store`).
TASK_QUOTA_REFRESH_PRICES = "atlas.quotas.refresh_prices"
#: Beat: the live cost meter (a ``cost`` event and the month's spend per running session).
TASK_METER = "atlas.sessions.meter"
#: Beat: GPU-idle reaping of opted-in running sessions (provider utilisation polls).
TASK_GPU_WATCH = "atlas.sessions.gpu_watch"
#: Beat: the meter checked against the provider's billing (``cost_drift`` events).
TASK_RECONCILE_BILLING = "atlas.sessions.reconcile_billing"

QUEUE_COMPUTE = "compute"
QUEUE_JOBS = "jobs"
QUEUE_FLY = "fly"
QUEUE_MAINTENANCE = "maintenance"

#: Queues: the default namespace consumes these; another one ``<namespace>.<queue>``
#: (``Keyspace.queue``), so deployments sharing a broker never take each other's tasks.

#: Key prefix of the redbeat scheduler; its lock key is ``<prefix>::lock``.
REDBEAT_KEY_PREFIX = "atlas:redbeat:"

# --------------------------------------------------------------------------- defaults

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: Default idle TTL of a tracked session (15 minutes, like the seed guide).
DEFAULT_IDLE_TTL_MS = 15 * 60 * 1000
#: Beat period of the reaper. Short because a sweep is cheap (cost ∝ what is due).
DEFAULT_REAP_INTERVAL_MS = 1000
#: A prefixed pod younger than this is never reaped as an orphan (its spawn may be in flight).
DEFAULT_ORPHAN_GRACE_MS = 60 * 1000

#: Environment variable carrying the bearer token into a pod.
PRESHARED_KEY_ENV = "ATLAS_PRESHARED_KEY"
#: Environment variable carrying the signed-URL secret into a pod.
SIGNING_SECRET_ENV = "ATLAS_SIGNING_SECRET"

#: Each provider's own API-key environment variable (the last step of key resolution).
PROVIDER_KEY_ENV = {
    "runpod": "RUNPOD_API_KEY",
    "fly": "FLY_API_TOKEN",
    "lambda_labs": "LAMBDA_LABS_API_KEY",
    "vast": "VAST_API_KEY",
}

# --------------------------------------------------------------------------- serverless jobs
# Owned by atlas_tasks.jobs (the job record, the poller's lease) and atlas_tasks.tasks.jobs.

#: Hash with one serverless job's record: provider, endpoint, provider job id, status,
#: timestamps, poll sequence, chunk cursor, final output/error. Never a raw secret: a
#: per-call API key is kept only Fernet-sealed (``api_key_sealed``).
JOB_KEY = "atlas:job:{id}"

#: Single-flight lease of a job's poller: ``SET NX PX`` holding the owner token of the
#: poll task running right now. Every write of a poll iteration (status, chunks, final
#: result) is fenced on it, so a zombie poller whose lease expired can write nothing.
JOB_LEASE_KEY = "atlas:job-lease:{id}"

#: How long a finished job's record (status, output, error) stays readable by get()/wait().
#: ``AtlasSettings.job_result_ttl_ms`` overrides it when that setting exists.
DEFAULT_JOB_RESULT_TTL_MS = 3600 * 1000

#: Per-job maximum duration when submit() names none: RunPod's own default job TTL (24 h),
#: so atlas never gives up on a job the provider would still run.
DEFAULT_JOB_MAX_DURATION_S = 24 * 3600.0

#: Extra life of an active job's record beyond its max duration, so a poller that is late
#: (broker backlog, worker restart) still finds the record to time the job out.
JOB_RECORD_GRACE_MS = 3600 * 1000

#: Poll delays: first delay, growth cap (seconds). Exponential with jitter in between,
#: reset to the base while a streaming job keeps producing chunks.
JOB_POLL_BASE_S = 0.5
JOB_POLL_CAP_S = 5.0

#: Lease of one poll iteration: longer than an iteration normally takes, short enough that
#: a crashed poller's chain resumes within a minute. A poller that overruns it can write
#: nothing any more (every write is fenced on the lease), so correctness never rests on it.
JOB_POLL_LEASE_MS = 60 * 1000

#: Hard time limit of one poll iteration (prefork pools), below the lease so a killed
#: iteration frees its lease before another poller could overlap it.
JOB_POLL_TIME_LIMIT_S = 50

#: Consecutive transient poll failures (5xx, 429, transport) before the job is failed.
JOB_POLL_MAX_ERRORS = 20

#: Task-level retries of a submission refused with 429 (never for failures that may
#: have reached the provider: POST /run is not idempotent).
JOB_SUBMIT_MAX_RETRIES = 5

# --------------------------------------------------------------------------- fly platform ops
# Owned by atlas_tasks.fly (deploy, logs streamer, token chain) and atlas_tasks.tasks.fly;
# the keys are formatted in atlas_tasks.fly.store (FLY_TOKEN_KEY: fly.token_storage).

#: Self-rescheduling logs streamer of one Fly app (one running chain per app, cluster-wide).
TASK_FLY_LOGS_POLL = "atlas.fly.logs_poll"

#: Lock of an app's logs streamer: an owner-token lease (:class:`atlas_tasks.lease.Lease`)
#: of the running chain. Renewed on every poll; every publish and cursor move is fenced on it, so a
#: streamer whose lease ran out (a frozen or killed worker) can publish nothing any more.
FLY_LOGS_LOCK_KEY = "atlas:fly:logs-lock:{app}"

#: Start marker of an app's streamer (``SET NX PX "1"``): many subscribers noticing a
#: missing streamer at once enqueue one start task, not one each. A throttle, not a lock:
#: nobody owns or releases it; the streamer lock alone keeps the streamer single-instance.
FLY_LOGS_START_KEY = "atlas:fly:logs-start:{app}"

#: How long a start marker holds: long enough for the start task to take the lock.
FLY_LOGS_START_TTL_MS = 3000

#: Cursor of an app's streamer: the last ``meta.next_token`` committed together with the
#: batch it ended (one Lua call), so a restarted streamer neither repeats nor drops entries.
FLY_LOGS_CURSOR_KEY = "atlas:fly:logs-cursor:{app}"

#: How long a cursor outlives its streamer. A crashed streamer's successor resumes from it;
#: a cursor older than this would replay a stale backlog, so it starts fresh instead.
FLY_LOGS_CURSOR_TTL_MS = 3600 * 1000

#: Sorted set of an app's log subscribers: member = subscriber id, score = deadline (ms).
#: subscribe_logs() pushes its deadline forward while it iterates; the streamer stops when
#: no deadline is in the future (a subscriber that died silently drops out within the TTL).
FLY_LOGS_SUBSCRIBERS_KEY = "atlas:fly:logs-subs:{app}"

#: Lifetime of one subscriber registration; refreshed every third of it while iterating.
FLY_LOGS_SUBSCRIBER_TTL_MS = 30_000

#: A streamer started with no subscriber at all (pre-warm) stops after this long alone.
FLY_LOGS_IDLE_STOP_MS = 60_000

#: Fly's logs API returns at most this many entries per page; a full page means "poll
#: again at once" rather than after the poll interval.
FLY_LOGS_PAGE_SIZE = 100

#: Durable Fly token of one app, kind ``cached`` or ``manual`` (Fernet-sealed JSON
#: ``{"token", "expires_at"}``; cached entries expire with the token).
FLY_TOKEN_KEY = "atlas:fly:token:{app}:{kind}"

#: Single-flight lease (owner token, :class:`atlas_tasks.lease.Lease`) of token resolution
#: for one app: whoever holds it runs ``fly tokens create`` while the others wait for the
#: value to appear in storage.
FLY_TOKEN_LOCK_KEY = "atlas:fly:token-lock:{app}"

#: Lines of ``fly deploy`` output kept for the error message of a failed deploy.
FLY_DEPLOY_TAIL_LINES = 30

#: Grace between SIGTERM and SIGKILL of a timed-out ``fly deploy`` process group.
FLY_DEPLOY_KILL_GRACE_S = 5.0

#: Time limit margin of the deploy task over its absolute cap (the cap kills flyctl first).
FLY_DEPLOY_TIME_LIMIT_MARGIN_S = 60

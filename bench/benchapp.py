"""The workload's Celery app with benchmark-only overrides: ``celery -A bench.benchapp worker``.

The workload keeps its production guarantees (late acks, stored results, a STARTED state);
the workload benchmark also measures what each costs. These variables exist only here, so
the workload's defaults cannot drift because of a benchmark:

* ``BENCH_ACKS_LATE``      -- ``task_acks_late`` (workload: true)
* ``BENCH_IGNORE_RESULT``  -- ``task_ignore_result`` (workload: false)
* ``BENCH_TRACK_STARTED``  -- ``task_track_started`` (workload: true)
* ``BENCH_ACK_EMULATION``  -- kombu's Redis ``ack_emulation`` transport option (default true:
  every delivery is written to the ``unacked`` hash and removed on ack; false: a message is
  gone from Redis once fetched, so a crashed worker loses its prefetched tasks)

Unset means the workload's own value. Task names and queues are unchanged.
"""

from __future__ import annotations

import os

from workload.app import app
from workload.config import env_bool

OVERRIDES = {
    "BENCH_ACKS_LATE": "task_acks_late",
    "BENCH_IGNORE_RESULT": "task_ignore_result",
    "BENCH_TRACK_STARTED": "task_track_started",
}

# Tasks read these settings when they are bound (at finalize), so updating now is in time.
app.conf.update(
    {
        setting: env_bool(variable, False)
        for variable, setting in OVERRIDES.items()
        if os.environ.get(variable, "").strip()
    }
)

if os.environ.get("BENCH_ACK_EMULATION", "").strip():
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "ack_emulation": env_bool("BENCH_ACK_EMULATION", True),
    }

__all__ = ["app"]

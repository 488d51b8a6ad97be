"""A task that rejects its message, loaded into a workload worker with ``-I``.

The workload has no task that raises ``Reject`` (its failures are retried or
dead-lettered), but the exporter must count ``task-rejected`` exactly, so the exactness
test adds this one to a real worker.
"""

from celery.exceptions import Reject

from workload.app import app


@app.task(name="tests.reject_me", acks_late=True)
def reject_me() -> None:
    raise Reject("rejected on purpose by the exactness test", requeue=False)

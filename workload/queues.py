"""The workload's queues and routes: the one definition every other part reads.

Importing this module connects nowhere and reads no environment, so the local stack
(``scripts/stack.py``), the Kubernetes generator (``k8s/generate.py``), the exporter's
``--queues`` and the tests can all take the queue names from here.
"""

from __future__ import annotations

# Queues the API and the tasks feed, in the order the stack and k8s list their workers.
WORK_QUEUES: tuple[str, ...] = ("cpu", "io", "email", "default")
# Where the dead-letter hook publishes final failures (workload/dlq.py consumes it).
DEAD_LETTER_QUEUE = "dead_letter"
# Every queue a workload worker consumes: one worker (Deployment) per queue.
QUEUES: tuple[str, ...] = (*WORK_QUEUES, DEAD_LETTER_QUEUE)
DEFAULT_QUEUE = "default"

# Task name -> queue; anything not listed goes to DEFAULT_QUEUE.
ROUTES: dict[str, str] = {
    "workload.tasks.generate_report": "cpu",
    "workload.tasks.send_welcome_email": "email",
    "workload.tasks.process_image": "io",
    "workload.dlq.park": DEAD_LETTER_QUEUE,
}

# kombu's Redis transport keeps priorities 3, 6 and 9 in sibling lists named
# queue + "\x06\x16" + priority; a queue's length is the sum over all four lists.
PRIORITY_SUFFIXES: tuple[str, ...] = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def queue_of(task_name: str) -> str:
    """The queue a task of this name is routed to."""
    return ROUTES.get(task_name, DEFAULT_QUEUE)


def redis_lists(queue: str) -> tuple[str, ...]:
    """The Redis list keys holding ``queue``'s messages (every priority)."""
    return tuple(queue + suffix for suffix in PRIORITY_SUFFIXES)

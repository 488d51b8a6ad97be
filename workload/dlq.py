"""The dead-letter queue Celery lacks on Redis, and ``workload-dlq`` to work with it.

1. Every workload task uses :class:`DeadLetterTask`. When a task fails for good (a permanent
   error, or a transient one after its last retry) its failure hook publishes a letter — the
   task's id, name, args, kwargs, exception, traceback, original queue and time — as the JSON
   task ``workload.dlq.park`` to the ``dead_letter`` queue.
2. The dead-letter consumer (``celery -A workload.app worker -Q dead_letter -c 1``) runs
   ``park``, which stores the letter in Redis (hash ``workload:dlq:letters``, sorted set
   ``workload:dlq:index`` by failure time) and logs it. Until a consumer runs, letters wait in
   the ``dead_letter`` list, where ``celery_queue_length{queue_name="dead_letter"}`` shows them.
3. ``workload-dlq list|show|requeue|purge`` reads and acts on the parked letters; ``requeue``
   sends the original task, with the same id, back to its original queue.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click
import redis
from celery import Task
from kombu.exceptions import OperationalError

from exporter.logs import mask_url
from workload import datastore, logs, queues
from workload.app import app, settings
from workload.errors import WorkloadError

PARK_TASK = "workload.dlq.park"
DLQ_QUEUE = queues.DEAD_LETTER_QUEUE
LETTERS_KEY = f"{datastore.KEY_PREFIX}dlq:letters"
INDEX_KEY = f"{datastore.KEY_PREFIX}dlq:index"
MAX_TRACEBACK = 20_000

log = logs.get_logger("workload.dlq")


def original_queue(task: Task) -> str:
    delivery = task.request.delivery_info or {}
    queue = delivery.get("routing_key")
    if queue:
        return str(queue)
    route = app.amqp.router.route({}, task.name)
    return route["queue"].name


def build_letter(task: Task, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                 traceback: str) -> dict[str, Any]:  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    return {
        "id": task_id,
        "name": task.name,
        "args": list(args or ()),
        "kwargs": dict(kwargs or {}),
        "exception": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": traceback[-MAX_TRACEBACK:],
        "queue": original_queue(task),
        "retries": task.request.retries,
        "hostname": task.request.hostname,
        "failed_at": now.timestamp(),
        "failed_at_iso": now.isoformat(),
    }


class DeadLetterTask(Task):
    """Base class of the workload's tasks: a final failure is published as a dead letter,
    and every attempt logs one ``task finished`` line (workload/logs.py)."""

    # Expected failures are logged without a traceback by Celery (ours keep it in the letter).
    throws = (WorkloadError,)

    # Celery's tracer calls these two directly (no signal dispatch) around the task body.
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        logs.task_started(task_id, self.name)

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any,
                     einfo: Any) -> None:  # fmt: skip
        logs.task_returned(task_id, status, self.request.delivery_info)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:  # fmt: skip
        if self.name == PARK_TASK:
            return  # never dead-letter a dead letter
        letter = build_letter(
            self, exc, task_id, args, kwargs, str(getattr(einfo, "traceback", ""))
        )
        try:
            self.app.send_task(PARK_TASK, args=[letter], queue=DLQ_QUEUE)
        except Exception as error:  # the broker is gone too; say so loudly, never crash the worker
            log.error(
                "dead letter lost",
                task_id=task_id,
                task_name=self.name,
                exception=type(exc).__name__,
                error=str(error),
            )
        else:
            log.warning(
                "dead lettered",
                task_id=task_id,
                task_name=self.name,
                exception=type(exc).__name__,
                queue=letter["queue"],
            )


@app.task(
    name=PARK_TASK,
    base=DeadLetterTask,  # its log line; on_failure never dead-letters a dead letter
    autoretry_for=(redis.RedisError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=None,
)
def park(letter: dict[str, Any]) -> str:
    """Store a dead letter (idempotent: a redelivered letter overwrites itself)."""
    if not isinstance(letter, dict) or not isinstance(letter.get("id"), str):
        raise ValueError("a dead letter must be an object with a string id")
    store(datastore.client(settings), letter)
    log.warning(
        "dead letter parked",
        letter_id=letter["id"],
        letter_task=letter.get("name"),
        exception=letter.get("exception"),
        queue=letter.get("queue"),
    )
    return letter["id"]


# --- storage ----------------------------------------------------------------------------------


def store(client: redis.Redis, letter: dict[str, Any]) -> None:
    pipe = client.pipeline()
    pipe.hset(LETTERS_KEY, letter["id"], json.dumps(letter))
    pipe.zadd(INDEX_KEY, {letter["id"]: float(letter.get("failed_at") or 0)})
    pipe.execute()


def list_letters(client: redis.Redis, limit: int | None = None) -> list[dict[str, Any]]:
    """Parked letters, newest first."""
    ids = client.zrevrange(INDEX_KEY, 0, -1 if limit is None else limit - 1)
    if not ids:
        return []
    return [json.loads(raw) for raw in client.hmget(LETTERS_KEY, ids) if raw is not None]


def get_letter(client: redis.Redis, letter_id: str) -> dict[str, Any] | None:
    raw = client.hget(LETTERS_KEY, letter_id)
    return None if raw is None else json.loads(raw)


def remove(client: redis.Redis, letter_id: str) -> None:
    client.pipeline().hdel(LETTERS_KEY, letter_id).zrem(INDEX_KEY, letter_id).execute()


def waiting_count(broker: redis.Redis) -> int:
    """Letters published but not parked yet (no dead-letter consumer running)."""
    pipe = broker.pipeline()
    for key in queues.redis_lists(DLQ_QUEUE):
        pipe.llen(key)
    return sum(pipe.execute())


def requeue(client: redis.Redis, letter: dict[str, Any]) -> None:
    """Send the original task (same id, args, kwargs) back to its queue, then drop the letter."""
    app.send_task(
        letter["name"],
        args=letter.get("args") or [],
        kwargs=letter.get("kwargs") or {},
        task_id=letter["id"],
        queue=letter.get("queue") or None,
    )
    remove(client, letter["id"])


# --- CLI ------------------------------------------------------------------------------------

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _guard(action: Callable[[], None]) -> None:
    """Run a command, turning an unreachable Redis into one clear line and exit status 1."""
    try:
        action()
    except (redis.RedisError, OperationalError) as exc:
        # The data store defaults to the broker's URL: name each distinct URL once.
        targets = dict.fromkeys(mask_url(u) for u in (settings.data_redis_url, settings.broker_url))
        where = " and ".join(targets)
        raise click.ClickException(f"cannot reach Redis at {where}: {exc}") from None


def _emit(as_json: bool, payload: Any, text: Iterable[str]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        for line in text:
            click.echo(line)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """List, inspect, re-queue and purge the workload's dead letters."""


@cli.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Newest N only.")
@json_option
def list_command(limit: int | None, as_json: bool) -> None:
    """Parked dead letters, newest first, and how many still wait in the queue."""

    def run() -> None:
        letters = list_letters(datastore.client(settings), limit)
        waiting = waiting_count(datastore.broker(settings))
        summary = [
            {k: letter.get(k) for k in ("id", "name", "queue", "exception", "failed_at_iso")}
            for letter in letters
        ]
        lines = [f"{'ID':36}  {'TASK':34}  {'QUEUE':8}  {'EXCEPTION':22}  FAILED AT"]
        lines += [
            f"{s['id']:36}  {s['name']:34}  {s['queue']:8}  {s['exception']:22}  "
            f"{s['failed_at_iso']}"
            for s in summary
        ]
        lines.append(
            f"{len(letters)} parked; {waiting} waiting in queue {DLQ_QUEUE!r}"
            + (" (start the dead-letter consumer to park them)" if waiting else "")
        )
        _emit(as_json, {"letters": summary, "parked": len(letters), "waiting": waiting}, lines)

    _guard(run)


@cli.command("show")
@click.argument("letter_id")
@json_option
def show_command(letter_id: str, as_json: bool) -> None:
    """Everything stored about one dead letter, traceback included."""

    def run() -> None:
        letter = get_letter(datastore.client(settings), letter_id)
        if letter is None:
            raise click.ClickException(f"no dead letter with id {letter_id!r}")
        fields = [
            f"{key}: {json.dumps(letter[key])}" for key in sorted(letter) if key != "traceback"
        ]
        _emit(as_json, letter, [*fields, "traceback:", letter.get("traceback", "")])

    _guard(run)


@cli.command("requeue")
@click.argument("letter_ids", nargs=-1)
@click.option("--all", "requeue_all", is_flag=True, help="Re-queue every parked letter.")
@json_option
def requeue_command(letter_ids: tuple[str, ...], requeue_all: bool, as_json: bool) -> None:
    """Send dead letters' tasks back to their original queues (same task id)."""
    if bool(letter_ids) == requeue_all:
        raise click.UsageError("give one or more letter ids, or --all")

    def run() -> None:
        client = datastore.client(settings)
        letters = list_letters(client) if requeue_all else []
        for letter_id in letter_ids:
            letter = get_letter(client, letter_id)
            if letter is None:
                raise click.ClickException(f"no dead letter with id {letter_id!r}")
            letters.append(letter)
        for letter in letters:
            requeue(client, letter)
        done = [{"id": x["id"], "name": x["name"], "queue": x["queue"]} for x in letters]
        lines = [f"requeued {d['id']} ({d['name']}) to {d['queue']}" for d in done]
        _emit(as_json, {"requeued": done}, lines or ["nothing to requeue"])

    _guard(run)


@cli.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--waiting", is_flag=True, help=f"Also empty the {DLQ_QUEUE!r} queue itself.")
@json_option
def purge_command(yes: bool, waiting: bool, as_json: bool) -> None:
    """Delete every parked dead letter (and, with --waiting, unparked ones)."""

    def run() -> None:
        client = datastore.client(settings)
        count = client.hlen(LETTERS_KEY)
        if not yes and not click.confirm(f"Delete {count} dead letters?", default=False):
            raise click.ClickException("aborted; nothing deleted")
        client.delete(LETTERS_KEY, INDEX_KEY)
        dropped = 0
        if waiting:
            broker = datastore.broker(settings)
            dropped = waiting_count(broker)
            broker.delete(*queues.redis_lists(DLQ_QUEUE))
        _emit(
            as_json,
            {"purged": count, "waiting_dropped": dropped},
            [f"purged {count} dead letters" + (f" and {dropped} waiting" if waiting else "")],
        )

    _guard(run)


if __name__ == "__main__":
    sys.exit(cli())

"""Beat's scheduler for the workload: Celery's own, with its state file under a state dir.

Celery's PersistentScheduler keeps the last run times in a shelve file, by default
``celerybeat-schedule`` in the working directory, which fails in a read-only checkout or
container. The workload points that file at ``WORKLOAD_STATE_DIR`` (``beat_schedule_filename``
in workload/app.py); this class only creates the directory first, since the file is opened
before beat's ``beat_init`` signal.
"""

from __future__ import annotations

from pathlib import Path

from celery.beat import PersistentScheduler


class StateDirScheduler(PersistentScheduler):
    """PersistentScheduler that creates the schedule file's directory."""

    def setup_schedule(self) -> None:
        directory = Path(self.schedule_filename).parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(
                f"workload beat: cannot create {directory} for the schedule file ({exc}); "
                "set WORKLOAD_STATE_DIR or pass -s PATH"
            ) from None
        super().setup_schedule()

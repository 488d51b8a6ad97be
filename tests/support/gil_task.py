"""A task that holds the GIL, loaded into a threads-pool workload worker with ``-I``.

Some C extensions hold the GIL for seconds. In a threads pool that starves the worker's
event loop: no heartbeats go out while the task runs, and the worker looks dead although it
works. The exporter saw the task start, so it can say "busy" instead of "lost".
"""

import ctypes
import time

from workload.app import app


@app.task(name="tests.hold_gil")
def hold_gil(seconds: int) -> None:
    time.sleep(0.5)  # let the event loop publish task-started first, as it would between calls
    ctypes.PyDLL(None).sleep(seconds)  # libc sleep() called with the GIL held

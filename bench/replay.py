"""How fast is this machine right now? Decode + state per event, in process, no sockets.

    python bench/replay.py

Replays the ingest benchmark's stream (bench/envelopes.py) through ``decode_envelope`` and
``State.apply`` and prints CPU microseconds per event. The ingest figures depend on the
machine's speed at the time (on a shared machine it varies severalfold), so results quote
this figure beside them.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.envelopes import Stream
from exporter.decode import decode_envelope
from exporter.state import Options, State

MESSAGES = 200_000


def main() -> None:
    messages = [(data, n) for _, data, n in itertools.islice(Stream(seed=7).messages(), MESSAGES)]
    events = sum(n for _, n in messages)
    state = State(Options())
    received = time.time()  # the envelopes' timestamps are recent: not out of range
    started = time.process_time()
    for data, _ in messages:
        state.apply(decode_envelope(data), received)
    seconds = time.process_time() - started
    print(f"{seconds / events * 1e6:.2f} us/event (CPU) over {events:,} events")


if __name__ == "__main__":
    main()

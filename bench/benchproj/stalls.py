"""Where the event loop stalls: a watchdog thread that samples the loop thread's stack.

With BENCH_STALL_LOG=<file> (and BENCH_STALL_MS, default 50) the benchmark server runs a
thread that asks the loop every 10 ms to run a callback (``call_soon_threadsafe``). While
an answer is late by more than BENCH_STALL_MS, the thread samples the loop thread's stack
every 5 ms; once the loop answers, it appends one line per stall to the file: when, how
long, how many samples, and the stacks sampled most (innermost frames first), the loop
thread's and the other threads'. A stall
whose cause holds the GIL in C code (one long call) shows as one frame sampled many times.
For diagnosis only: a profile says where the time goes on average, this says what held
the loop when a ping waited.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter

POLL = 0.010
SAMPLE = 0.005
DEPTH = 14


def _stack(frame) -> str:
    frames = []
    while frame is not None and len(frames) < 60:
        code = frame.f_code
        frames.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return " < ".join(frames[:DEPTH])


class Watchdog(threading.Thread):
    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, threshold_ms: float):
        super().__init__(name="stall-watchdog", daemon=True)
        self.loop, self.path, self.threshold = loop, path, threshold_ms / 1000
        self.loop_thread = threading.get_ident()

    def run(self) -> None:
        while True:
            answered = threading.Event()
            asked = time.perf_counter()
            try:
                self.loop.call_soon_threadsafe(answered.set)
            except RuntimeError:
                return  # the loop closed
            if answered.wait(self.threshold):
                time.sleep(POLL)
                continue
            samples: Counter[str] = Counter()
            others: Counter[str] = Counter()  # what the other threads were doing meanwhile
            me = threading.get_ident()
            while not answered.wait(SAMPLE):
                frames = sys._current_frames()
                samples[_stack(frames.get(self.loop_thread))] += 1
                for ident, frame in frames.items():
                    if ident not in (me, self.loop_thread):
                        others[_stack(frame)[:400]] += 1
            stall = (time.perf_counter() - asked) * 1000
            with open(self.path, "a") as out:
                out.write(json.dumps({"at": time.time(), "ms": round(stall, 1),
                                      "samples": sum(samples.values()),
                                      "top": samples.most_common(4),
                                      "others": others.most_common(4)}) + "\n")


def traced(application, path: str, threshold_ms: float):
    """``application``, starting the watchdog on the loop of its first call."""
    started = []

    async def app(scope, receive, send):
        if not started:
            started.append(Watchdog(asyncio.get_running_loop(), path, threshold_ms))
            started[0].start()
        return await application(scope, receive, send)

    return app

"""Which upload is decoded next, so that one branch's large archives do not hold up another branch.

Decoding an upload (inflate, check, fold in) is the server's heaviest work. Two lanes of worker threads do
it: archives that inflate to at most `SMALL_BYTES` in one, larger ones in the other, so a small upload never
waits behind a large one. In each lane the branches take turns, one upload each, so a branch sending many
uploads delays another branch's by at most one of its own. Each lane has two workers: at most four decoded
archives exist at once, two of them small.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

SMALL_BYTES = 64 * 1024 * 1024
WORKERS_PER_LANE = 2

Result = TypeVar("Result")


class FairLane:
    """Worker threads taking jobs from the branches in turn."""

    def __init__(self, name: str, workers: int = WORKERS_PER_LANE) -> None:
        self._queues: dict[str, deque[tuple[Future, Callable[[], object]]]] = {}
        self._turns: deque[str] = deque()  # branches with jobs waiting, next first
        self._ready = threading.Condition()
        self._closing = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, branch_id: str, job: Callable[[], Result]) -> Future[Result]:
        future: Future[Result] = Future()
        with self._ready:
            if self._closing:
                raise RuntimeError("expected an open ingest lane, got one shutting down")
            if branch_id not in self._queues:
                self._queues[branch_id] = deque()
                self._turns.append(branch_id)
            self._queues[branch_id].append((future, job))
            self._ready.notify()
        return future

    def _next(self) -> tuple[Future, Callable[[], object]] | None:
        with self._ready:
            while not self._turns:
                if self._closing:
                    return None
                self._ready.wait()
            branch_id = self._turns.popleft()
            queue = self._queues[branch_id]
            taken = queue.popleft()
            if queue:
                self._turns.append(branch_id)
            else:
                del self._queues[branch_id]
            return taken

    def _work(self) -> None:
        while (taken := self._next()) is not None:
            future, job = taken
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the waiting request, as an executor would
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Finish the jobs already submitted, then stop the workers."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()


class IngestLanes:
    def __init__(self) -> None:
        self._small = FairLane("ingest-small")
        self._large = FairLane("ingest-large")

    def submit(self, branch_id: str, inflated_bytes: int, job: Callable[[], Result]) -> Future[Result]:
        """Run `job` in the lane for an archive that inflates to `inflated_bytes`, in `branch_id`'s turn."""
        lane = self._small if inflated_bytes <= SMALL_BYTES else self._large
        return lane.submit(branch_id, job)

    def shutdown(self) -> None:
        self._small.shutdown()
        self._large.shutdown()

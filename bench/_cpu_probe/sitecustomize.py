"""CPU probe for `bench/round_budget.py`: where a process's CPU goes, by task, flow, call and thread.

Loaded as `sitecustomize` (the benchmark puts this folder first on PYTHONPATH) into a fresh `fedgrove demo` or
`bench/_prefect_floor.py` process, and only when FEDGROVE_CPU_PROBE_OUT names the file to write. It changes no
behaviour: once each of these modules has imported, it wraps a few of its functions to read the calling
thread's CPU clock before and after:
- Prefect's task engine: each task run whole (`run_task_sync`) and its body (`call_task_fn`, which includes
  Prefect's handling of the returned value), by task name and by the calling thread's name;
- Prefect's flow engine: each flow run whole (`run_flow_sync`), by the calling thread's name;
- the official client's `file_upload` and `file_download`, by the task run they are called in;
- the model's fit and measurement at a site (`fedgrove.site_training.fit` and `.measure`; the pipeline's task
  modules import them by name, after this has wrapped them), by the task run they are called in;
- a leaf's round checkpoint and kept round model (`fedgrove.checkpoints.LeafCheckpoints.save_round` and
  `.save_round_model`).
It also reads every Python thread's CPU clock when the thread ends (or at exit for those still running), summed
by thread name without its number, and the process's CPU at exit. Never imported by the project.
"""

from __future__ import annotations

import atexit
import collections
import functools
import importlib.abc
import json
import os
import re
import sys
import threading
import time

OUT = os.environ.pop("FEDGROVE_CPU_PROBE_OUT", None)  # this process only: not its servers, which inherit the rest
_lock = threading.Lock()
_cpu: collections.Counter = collections.Counter()
_calls: collections.Counter = collections.Counter()
_threads: dict[int, tuple[str, float]] = {}


def _group(name: str) -> str:
    """A thread's name without the numbers that tell its pool's threads apart."""
    return re.sub(r"[-_]\d+(?= |$)", "_N", name)


def _timed(key_of, function):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent = time.thread_time() - started
            key = key_of(*args, **kwargs)
            with _lock:
                _cpu[key] += spent
                _calls[key] += 1
    return timed


def _thread_name() -> str:
    return _group(threading.current_thread().name)


_current = threading.local()  # the task run this thread is in: calls inside it are counted by its task


def _task_name() -> str:
    return getattr(_current, "task", "-")


def _task_engine(module) -> None:
    engine = module.SyncTaskRunEngine
    engine.call_task_fn = _timed(lambda self, *a, **k: f"body|{self.task.name}", engine.call_task_fn)
    timed_run = _timed(lambda *a, **k: f"task_run|{k['task'].name}|{_thread_name()}", module.run_task_sync)

    @functools.wraps(module.run_task_sync)
    def run_task_sync(*args, **kwargs):
        outer, _current.task = _task_name(), kwargs["task"].name
        try:
            return timed_run(*args, **kwargs)
        finally:
            _current.task = outer

    module.run_task_sync = run_task_sync


def _flow_engine(module) -> None:
    module.run_flow_sync = _timed(lambda *a, **k: f"flow_run|{_thread_name()}", module.run_flow_sync)


def _official_client(module) -> None:
    for name in ("file_upload", "file_download"):
        setattr(module.Client, name, _timed(lambda *a, _name=name, **k: f"client|{_name}|{_task_name()}",
                                            getattr(module.Client, name)))


def _site_training(module) -> None:
    for name in ("fit", "measure"):
        setattr(module, name, _timed(lambda *a, _name=name, **k: f"compute|{_name}|{_task_name()}",
                                            getattr(module, name)))


def _checkpoints(module) -> None:
    for name in ("save_round", "save_round_model"):
        setattr(module.LeafCheckpoints, name, _timed(lambda *a, _name=name, **k: f"checkpoint|{_name}|{_task_name()}",
                                                     getattr(module.LeafCheckpoints, name)))


WRAP_AFTER_IMPORT = {"prefect.task_engine": _task_engine, "prefect.flow_engine": _flow_engine,
                     "branchkey.client": _official_client, "fedgrove.site_training": _site_training,
                     "fedgrove.checkpoints": _checkpoints}


class _WrapAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the modules above, it lets the other finders find them and wraps the
    functions once the module has run."""

    def find_spec(self, name, path, target=None):
        if name not in WRAP_AFTER_IMPORT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                execute = spec.loader.exec_module

                def exec_module(module, _execute=execute, _wrap=WRAP_AFTER_IMPORT[name]):
                    _execute(module)
                    _wrap(module)

                spec.loader.exec_module = exec_module
                return spec
        return None


def _record_thread_ends() -> None:
    run = threading.Thread.run

    def run_and_record(self):
        try:
            run(self)
        finally:
            with _lock:
                _threads[threading.get_ident()] = (_group(self.name), time.thread_time())

    threading.Thread.run = run_and_record


def _write() -> None:
    alive = {}
    for thread in threading.enumerate():
        if thread.ident is None or thread.ident in _threads:
            continue
        try:
            alive[thread.ident] = (_group(thread.name),
                                   time.clock_gettime(time.pthread_getcpuclockid(thread.ident)))
        except (OSError, ValueError):
            pass
    threads: collections.Counter = collections.Counter()
    for name, seconds in [*_threads.values(), *alive.values()]:
        threads[name] += seconds
    figures = {"process_cpu_s": time.process_time(), "threads_cpu_s": dict(threads),
               "cpu_s": dict(_cpu), "calls": dict(_calls)}
    with open(OUT, "w") as handle:
        json.dump(figures, handle, indent=1)


if OUT:
    sys.meta_path.insert(0, _WrapAfterImport())
    _record_thread_ends()
    atexit.register(_write)  # registered first, so it runs last: after Prefect's own exit handlers

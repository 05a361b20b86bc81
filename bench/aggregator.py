"""Aggregation-server benchmark: ingest MB/s against a numpy floor, notification latency, peak server RSS.

    python bench/aggregator.py            # N = 5, 20, 100 leaves × P = 1e5, 1e6, 1e7 float32 parameters
    python bench/aggregator.py --quick    # N = 5, 20 × P = 1e5, 1e6 (CI smoke, < 60 s)

Each case starts the real server (`python -m aggregator`) as its own process on 127.0.0.1 with a fresh
data folder in a temp folder, and drives it with N official `branchkey` clients; see `_aggregator_case.py`
for what is timed. Results go to bench/results/aggregator.{json,md} (`--quick`: aggregator-quick.*).
All traffic stays on the loopback interface; every wait is bounded; the server is stopped in `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _aggregator_case import CaseResult, CaseSpec, run_case  # noqa: E402
from _aggregator_report import evaluate, render_markdown, render_table  # noqa: E402

FULL_LEAVES = (5, 20, 100)
FULL_PARAMS = (100_000, 1_000_000, 10_000_000)
QUICK_LEAVES = (5, 20)
QUICK_PARAMS = (100_000, 1_000_000)
MAX_WORKERS = 32  # upload threads in the benchmark process; more only adds client-side contention
WEIGHTS_WRITTEN_PER_CASE = 800_000_000  # float32 bytes of distinct archives written per case, at most
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import branchkey

    return {
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "branchkey": getattr(branchkey, "__version__", "3.0.1"),
    }


def plan(leaves: tuple[int, ...], params: tuple[int, ...], workers: int) -> list[CaseSpec]:
    specs = []
    for p in params:
        for n in leaves:
            distinct = min(n, max(1, WEIGHTS_WRITTEN_PER_CASE // (p * 4)))
            specs.append(CaseSpec(leaves=n, params=p, distinct_archives=distinct, workers=min(n, workers)))
    return specs


def serialise_npy_header_parsing() -> None:
    """One `.npy` header parse at a time in this process, on CPython < 3.12.

    CPython 3.11 keeps the AST constructor's recursion depth per interpreter, so `ast.literal_eval` in two
    threads at once can raise "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905).
    numpy parses every header with it, and this process runs up to 32 official clients whose `file_upload`
    validates the archive with `np.load`: a case failed so (20:11 UTC, N = 20, P = 1e6). A real leaf runs one
    client per process; the server serialises its own parses (`aggregator/archive.py`).
    """
    if sys.version_info >= (3, 12):
        return
    import threading

    import numpy.lib._format_impl as npy_format

    parse, lock = npy_format._read_array_header, threading.Lock()

    def parse_alone(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        with lock:
            return parse(*args, **kwargs)

    npy_format._read_array_header = parse_alone


def _terminate(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # so every `finally` runs and the server processes are stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 5, 20 and P = 1e5, 1e6 only")
    parser.add_argument("--leaves", type=int, nargs="+", help="override the leaf counts")
    parser.add_argument("--params", type=int, nargs="+", help="override the parameter counts")
    parser.add_argument("--workers", type=int, default=MAX_WORKERS, help="upload threads, at most (default 32)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    leaves = tuple(args.leaves or (QUICK_LEAVES if args.quick else FULL_LEAVES))
    params = tuple(args.params or (QUICK_PARAMS if args.quick else FULL_PARAMS))
    specs = plan(leaves, params, args.workers)
    out = sys.stdout
    signal.signal(signal.SIGTERM, _terminate)
    serialise_npy_header_parsing()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    say(f"aggregator benchmark: {len(specs)} cases (N={list(leaves)}, P={list(params)})")
    load_at_start = os.getloadavg()[0]
    if load_at_start > 1.0:
        say(f"  note: load average {load_at_start:.1f} before starting; other work is running on this machine")
    started = time.perf_counter()
    results: list[CaseResult] = []
    failures: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fedgrove-bench-") as temp, open(os.devnull, "w") as sink:
        for spec in specs:
            say(f"  N={spec.leaves:>3} P={spec.params:>10,} ...")
            try:
                with contextlib.redirect_stdout(sink):  # the official client prints on every call
                    result = run_case(spec, Path(temp))
            except KeyboardInterrupt:
                say("interrupted; servers stopped")
                return 130
            except Exception as exc:  # reported in the table and the JSON, and the exit code
                failures.append({"leaves": spec.leaves, "params": spec.params, "error": str(exc)[:2000]})
                say(f"    FAILED: {str(exc)[:500]}")
                continue
            results.append(result)
            say(f"    ingest {result.ingest_mb_s:.1f} MB/s (floor {result.floor_mb_s:.1f}), "
                f"notified {result.last_201_to_all_notified_ms:+.1f} ms after the last 201, "
                f"peak RSS {result.peak_rss_bytes / 1e6:.0f} MB, case {result.case_s:.1f} s")
    total_s = time.perf_counter() - started

    verdicts = evaluate(results)
    info = {**machine(), "load_avg_1m_at_start": round(load_at_start, 2)}
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/aggregator.py" + (" --quick" if args.quick else "")
    say("")
    say(render_table(results, verdicts))
    for failure in failures:
        say(f"FAILED N={failure['leaves']} P={failure['params']}: {failure['error'][:300]}")
    say(f"\ntotal {total_s:.0f} s")

    if not args.no_write:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stem = "aggregator-quick" if args.quick else "aggregator"
        report = {
            "date": when,
            "command": command,
            "machine": info,
            "total_s": round(total_s, 1),
            "targets": verdicts["targets"],
            "verdicts": verdicts["summary"],
            "cases": [{**asdict(r), **verdicts["per_case"][i]} for i, r in enumerate(results)],
            "failures": failures,
        }
        (args.results_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.results_dir / f"{stem}.md").write_text(
            render_markdown(results, verdicts, machine=info, date=when, command=command, total_s=total_s,
                            failures=failures)
        )
        say(f"wrote {args.results_dir / stem}.json and .md")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

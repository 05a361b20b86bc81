"""One benchmark case: N official clients upload archives of P float32 parameters to a fresh server.

Order of a case: start the server (own process) → create a branch with target N → connect N official
`branchkey` clients and wait until the admin API lists all N WebSockets → write the archives with the
client's `save_weights` (untimed) → start one waiter per client on `client.queue.get()` → timed: all N
`file_upload` calls from a thread pool → every waiter notified → the floor (np.load + float64 weighted
sum of the same archives, in this process) → download the aggregate once and check it against the floor →
timed again: the same N `file_upload` calls against a server that does nothing (`_upload_sink.py`), the
ceiling that the official client leaves to any server on this machine.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from branchkey import APIConfig, Client, Credentials, RetryConfig

from _aggregator_server import MB, ForeignCpu, PeakRss, ServerProcess, free_loopback_port
from _upload_sink import SinkProcess

NOTIFY_TIMEOUT_S = 300
UPLOAD_TIMEOUT_S = 600


@dataclass(frozen=True)
class CaseSpec:
    leaves: int
    params: int
    distinct_archives: int  # archives actually written; leaf i uploads archive i % distinct_archives
    workers: int  # upload threads


@dataclass
class CaseResult:
    leaves: int
    params: int
    distinct_archives: int
    workers: int
    model_bytes: int  # P × 4: one float32 model
    archive_bytes_each: float  # mean size of one .npz as written by save_weights
    uploaded_bytes: int
    ingest_s: float  # first upload start → last 201
    ingest_mb_s: float
    floor_s: float
    floor_mb_s: float
    floor_cpu_mb_s: float  # the same bytes ÷ the floor's CPU seconds (one thread)
    ratio: float
    sink_mb_s: float  # the same uploads against a server that only reads the body (`_upload_sink.py`)
    ceiling_ratio: float  # sink MB/s ÷ floor MB/s: the best ratio any server could reach here
    last_201_to_all_notified_ms: float  # negative: the last notification arrived before the last 201
    notify_spread_ms: float  # first notification → last notification
    peak_rss_bytes: int
    rss_before_bytes: int
    sampled_peak_rss_bytes: int
    kernel_hwm_bytes: int | None
    upload_s_median: float
    upload_s_max: float
    prepare_s: float
    connect_s: float
    case_s: float
    aggregate_max_abs_error: float
    foreign_cpu_share: float  # of the machine, used by other processes while the uploads ran
    server_cpu_s: float  # CPU seconds the server process used from the first upload to the last notification
    client_cpu_s: float  # the same for the benchmark process (the N official clients)
    server_cpu_mb_s: float  # uploaded MB ÷ server CPU seconds: the server's cost, whatever else ran
    load_avg_1m_before: float
    notes: list[str] = field(default_factory=list)


def layer_shapes(params: int) -> list[tuple[int, ...]]:
    """Four layers, like two dense layers, a smaller one and a bias: 60 %, 30 %, 10 % − 1000, 1000."""
    if params % 10_000 or params < 20_000:
        raise ValueError(f"expected a parameter count that is a multiple of 10000 (>= 20000), got {params}")
    width = 1000
    rows = [params * 6 // 10 // width, params * 3 // 10 // width, params // 10 // width - 1]
    shapes: list[tuple[int, ...]] = [(r, width) for r in rows] + [(width,)]
    assert sum(math.prod(s) for s in shapes) == params
    return shapes


def _credentials(leaf: dict) -> Credentials:
    return Credentials(**{key: leaf[key] for key in ("id", "name", "session_token", "tree_id", "branch_id", "owner_id")})


def _connect(server: ServerProcess, leaves: list[dict], downloads: Path) -> list[Client]:
    clients: list[Client] = []
    for leaf in leaves:
        clients.append(
            Client(
                _credentials(leaf),
                api_config=APIConfig(host=server.url, ssl=False),
                retry_config=RetryConfig(max_retries=0, total_timeout=UPLOAD_TIMEOUT_S),
                output_dir=str(downloads / leaf["name"]),
            )
        )
    return clients


def _close(clients: list[Client]) -> None:
    """Close the clients in parallel (each may wait up to 5 s for its WebSocket thread)."""
    if not clients:
        return
    with ThreadPoolExecutor(max_workers=min(len(clients), 32)) as pool:
        list(pool.map(lambda c: c.close(), clients))


def _write_archives(client: Client, spec: CaseSpec, folder: Path, seed: int) -> tuple[list[Path], list[float]]:
    """`distinct_archives` archives through the official `save_weights` (random float32 weights, two threads)."""
    shapes = layer_shapes(spec.params)

    def write(index: int) -> tuple[Path, float]:
        rng = np.random.default_rng([seed, index])
        layers = [(rng.standard_normal(shape, dtype=np.float32) * 0.05) for shape in shapes]
        weighting = float(rng.integers(50, 5000))  # a sample count
        return Path(client.save_weights(str(folder / f"leaf-{index}"), weighting, layers)), weighting

    with ThreadPoolExecutor(max_workers=2) as pool:
        written = list(pool.map(write, range(spec.distinct_archives)))
    return [p for p, _ in written], [w for _, w in written]


def floor(archives: list[Path], multiplicity: list[int], layer_count: int) -> tuple[float, float, list[np.ndarray]]:
    """np.load(allow_pickle=False) of each archive + the plain-numpy float64 weighted sum.

    Returns (wall seconds, this thread's CPU seconds, the weighted mean).

    Each distinct archive is loaded once and its weighting multiplied by how many leaves upload it,
    which gives the same mean as loading it that many times, at the same MB/s.
    """
    started, cpu_started = time.perf_counter(), time.thread_time()
    sums: list[np.ndarray] | None = None
    total = 0.0
    for path, count in zip(archives, multiplicity, strict=True):
        with np.load(path, allow_pickle=False) as archive:
            weighting = float(archive["weighting"][0]) * count
            layers = [archive[f"layer_{i}"] for i in range(layer_count)]
        if sums is None:
            sums = [np.zeros(layer.shape, dtype=np.float64) for layer in layers]
        for running, layer in zip(sums, layers, strict=True):
            running += np.multiply(layer, weighting, dtype=np.float64)
        total += weighting
    assert sums is not None
    mean = [(running / total).astype(np.float32) for running in sums]
    return time.perf_counter() - started, time.thread_time() - cpu_started, mean


def upload_to_sink(clients: list[Client], archives: list[Path], assignment: list[int], workers: int) -> float:
    """Wall seconds of the same N `file_upload` calls against a server that does nothing with them.

    The clients are pointed at the sink through the official client's private host attribute: the one way
    to time exactly its `file_upload` (hash, `np.load` validation, multipart body, send) with no server work.
    """
    with SinkProcess(free_loopback_port()) as sink:
        for client in clients:
            client._Client__api_host = sink.url  # type: ignore[attr-defined]
            client._session.close()  # fresh connections, as in the timed run
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda i: clients[i].file_upload(str(archives[assignment[i]])), range(len(clients))))
        return time.perf_counter() - started


def run_case(spec: CaseSpec, work: Path, *, seed: int = 2024) -> CaseResult:
    case_started = time.perf_counter()
    case_dir = work / f"n{spec.leaves}-p{spec.params}"
    (case_dir / "archives").mkdir(parents=True)
    notes: list[str] = []
    clients: list[Client] = []
    server = ServerProcess(case_dir / "server", log_path=case_dir / "server.log")
    try:
        server.start()
        with PeakRss(server.process.pid) as rss:  # type: ignore[union-attr]
            branch = server.create_branch(tree="bench", branch=f"n{spec.leaves}-p{spec.params}",
                                          leaves=spec.leaves, target=spec.leaves)
            connect_started = time.perf_counter()
            clients = _connect(server, branch["leaves"], case_dir / "downloads")
            server.wait_connected(branch["branch_id"], spec.leaves)
            connect_s = time.perf_counter() - connect_started

            prepare_started = time.perf_counter()
            archives, _weightings = _write_archives(clients[0], spec, case_dir / "archives", seed)
            prepare_s = time.perf_counter() - prepare_started
            sizes = [p.stat().st_size for p in archives]
            assignment = [i % spec.distinct_archives for i in range(spec.leaves)]
            uploaded_bytes = sum(sizes[a] for a in assignment)

            notified: list[float | None] = [None] * spec.leaves
            notified_ids: list[str | None] = [None] * spec.leaves

            def wait_for(index: int) -> None:
                try:
                    notified_ids[index] = clients[index].queue.get(timeout=NOTIFY_TIMEOUT_S)
                    notified[index] = time.perf_counter()
                except Exception:  # queue.Empty after the timeout: reported as a missing notification
                    pass

            waiters = [threading.Thread(target=wait_for, args=(i,), daemon=True) for i in range(spec.leaves)]
            for waiter in waiters:
                waiter.start()

            starts = [0.0] * spec.leaves
            ends = [0.0] * spec.leaves

            def upload(index: int) -> str:
                starts[index] = time.perf_counter()
                file_id = clients[index].file_upload(str(archives[assignment[index]]))
                ends[index] = time.perf_counter()
                return file_id

            for client in clients:
                # Drop each client's idle keep-alive connection (from its start-up GET) so every upload
                # opens a fresh one, as a leaf does after a round of training. Otherwise an upload sent
                # when the connection has been idle for uvicorn's 5 s keep-alive timeout races the
                # server's close and fails with "connection reset" (the client is built with
                # max_retries=0 so that nothing is silently re-sent).
                client._session.close()
            load_before = os.getloadavg()[0]
            rss.reset()
            with ForeignCpu(server.process.pid) as foreign:  # type: ignore[union-attr]
                with ThreadPoolExecutor(max_workers=spec.workers) as pool:
                    futures = [pool.submit(upload, i) for i in range(spec.leaves)]
                    errors = [f.exception(timeout=UPLOAD_TIMEOUT_S) for f in futures]
                failed = [e for e in errors if e is not None]
                if failed:
                    raise RuntimeError(f"{len(failed)}/{spec.leaves} uploads failed; first: {failed[0]}")
                deadline = time.monotonic() + NOTIFY_TIMEOUT_S
                for waiter in waiters:
                    waiter.join(timeout=max(0.0, deadline - time.monotonic()))
            rss_before = rss.baseline
        # PeakRss has stopped sampling; read the kernel's high-water mark before anything else runs
        peak_rss, kernel_hwm = rss.peak, rss.kernel_hwm()
        missing = sum(1 for t in notified if t is None)
        if missing:
            raise RuntimeError(f"{missing}/{spec.leaves} leaves got no aggregation notification "
                               f"within {NOTIFY_TIMEOUT_S} s")
        if len(set(notified_ids)) != 1:
            raise RuntimeError(f"leaves were notified of different aggregations: {sorted(set(map(str, notified_ids)))}")

        first_start, last_201 = min(starts), max(ends)
        ingest_s = last_201 - first_start
        times = [t for t in notified if t is not None]

        multiplicity = [assignment.count(a) for a in range(spec.distinct_archives)]
        floor_s, floor_cpu_s, expected = floor(archives, multiplicity, len(layer_shapes(spec.params)))
        floor_mb_s = sum(sizes) / MB / floor_s
        aggregate = clients[0].file_download(str(notified_ids[0]))
        with np.load(aggregate, allow_pickle=False) as archive:
            error = max(float(np.max(np.abs(archive[f"layer_{i}"] - layer))) for i, layer in enumerate(expected))
        if error > 1e-5:
            raise RuntimeError(f"the aggregate differs from the floor's weighted mean by {error}")

        ingest_mb_s = uploaded_bytes / MB / ingest_s
        sink_mb_s = uploaded_bytes / MB / upload_to_sink(clients, archives, assignment, spec.workers)
        durations = sorted(e - s for s, e in zip(starts, ends, strict=True))
        if spec.distinct_archives < spec.leaves:
            notes.append(f"{spec.distinct_archives} distinct archives reused across {spec.leaves} leaves")
        return CaseResult(
            leaves=spec.leaves,
            params=spec.params,
            distinct_archives=spec.distinct_archives,
            workers=spec.workers,
            model_bytes=spec.params * 4,
            archive_bytes_each=sum(sizes) / len(sizes),
            uploaded_bytes=uploaded_bytes,
            ingest_s=ingest_s,
            ingest_mb_s=ingest_mb_s,
            floor_s=floor_s,
            floor_mb_s=floor_mb_s,
            floor_cpu_mb_s=sum(sizes) / MB / max(floor_cpu_s, 1e-9),
            ratio=ingest_mb_s / floor_mb_s,
            sink_mb_s=sink_mb_s,
            ceiling_ratio=sink_mb_s / floor_mb_s,
            last_201_to_all_notified_ms=(max(times) - last_201) * 1000,
            notify_spread_ms=(max(times) - min(times)) * 1000,
            peak_rss_bytes=peak_rss,
            rss_before_bytes=rss_before,
            sampled_peak_rss_bytes=rss.sampled_peak,
            kernel_hwm_bytes=kernel_hwm,
            upload_s_median=durations[len(durations) // 2],
            upload_s_max=durations[-1],
            prepare_s=prepare_s,
            connect_s=connect_s,
            case_s=time.perf_counter() - case_started,
            aggregate_max_abs_error=error,
            foreign_cpu_share=foreign.share,
            server_cpu_s=foreign.server_cpu_s,
            client_cpu_s=foreign.bench_cpu_s,
            server_cpu_mb_s=uploaded_bytes / MB / max(foreign.server_cpu_s, 1e-9),
            load_avg_1m_before=load_before,
            notes=notes,
        )
    except Exception as exc:
        raise RuntimeError(f"{exc}\n--- server log (last lines) ---\n{server.log_tail()}") from exc
    finally:
        _close(clients)
        server.stop()
        shutil.rmtree(case_dir, ignore_errors=True)

"""Builds the aggregation server's FastAPI app from one settings object (nothing happens at import)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from aggregator.api import admin, branch_config, files, performance, run, ws
from aggregator.api.context import ServerContext
from aggregator.api.limits import BodyLimits
from aggregator.blobstore import blob_store_from_url
from aggregator.blobstore_errors import BlobStoreUnavailable
from aggregator.branch_report import BranchReports
from aggregator.branch_rows import BranchRows
from aggregator.config import AggregatorSettings
from aggregator.db import make_engine, make_session_factory, owner_only
from aggregator.errors import ApiError
from aggregator.memory import return_large_blocks_to_the_system
from aggregator.metrics import MetricsStore
from aggregator.notifier import ConnectionManager
from aggregator.registry import Registry
from aggregator.rounds import AggregationService
from aggregator.security import UrlSigner, checked_secret, load_or_create_secret
from aggregator.tickets import TicketBook

logger = logging.getLogger(__name__)


def build_context(settings: AggregatorSettings) -> ServerContext:
    return_large_blocks_to_the_system()
    data_dir = settings.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner_only(data_dir, 0o700)  # it holds the secrets, the database and every upload
    engine = make_engine(settings.resolved_database_url())
    try:
        return _context(settings, engine)
    except BaseException:
        engine.dispose()  # a refused start leaves no connection open (psycopg warns of one left to the collector)
        raise


def _context(settings: AggregatorSettings, engine: Engine) -> ServerContext:
    data_dir = settings.data_dir
    sessions = make_session_factory(engine)
    blobs = blob_store_from_url(settings.blob_url, data_dir=data_dir)
    scratch = data_dir / "tmp"
    scratch.mkdir(exist_ok=True)
    signing_key = _secret(settings.signing_key, "FEDGROVE_SIGNING_KEY", data_dir / "signing_key")
    admin_token = _secret(settings.admin_token, "FEDGROVE_ADMIN_TOKEN", data_dir / "admin_token")
    branches = BranchRows(sessions)
    registry = Registry(sessions, branches)
    service = AggregationService(
        sessions=sessions,
        branches=branches,
        blobs=blobs,
        scratch_dir=scratch,
        max_archive_bytes=settings.max_archive_bytes,
        max_archive_entries=settings.max_archive_entries,
        max_sum_bytes=settings.max_sum_bytes,
        keep_aggregates=settings.keep_aggregates,
        keep_uploads=settings.keep_uploads,
    )
    return ServerContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        registry=registry,
        service=service,
        reports=BranchReports(sessions=sessions, registry=registry, service=service),
        metrics=MetricsStore(sessions, max_bytes_per_leaf=settings.max_metrics_bytes_per_leaf),
        blobs=blobs,
        connections=ConnectionManager(per_leaf=settings.websockets_per_leaf),
        tickets=TicketBook(settings.ticket_ttl_s, per_leaf=settings.tickets_per_leaf),
        signer=UrlSigner(signing_key),
        admin_token=admin_token,
        scratch_dir=scratch,
    )


def _secret(configured: SecretStr | None, variable: str, path: Path) -> str:
    """The secret from the environment when set (and not empty), else the one kept in the data folder."""
    if configured:
        return checked_secret(configured.get_secret_value(), source=variable)
    return load_or_create_secret(path)


WATCHER_STOP_TIMEOUT_S = 30.0


async def finish_overdue_rounds(context: ServerContext, stopping: asyncio.Event, interval_s: float = 0.5) -> None:
    """Close rounds whose branch timeout has passed with a quorum of uploads, finish full rounds whose
    aggregate could not be stored before, try damaged rounds again, and notify the leaves; until `stopping`
    is set, and then only once a check already running has finished."""
    while True:
        try:
            await asyncio.wait_for(stopping.wait(), timeout=interval_s)
            return
        except TimeoutError:
            pass
        try:
            retried = await run_in_threadpool(context.service.retry_unfinished)
            retried += await run_in_threadpool(context.service.reload_damaged)
            timed_out = await run_in_threadpool(context.service.finalise_overdue)
        except Exception:
            logger.exception("checking round timeouts failed; trying again")
            continue
        for branch_id, aggregation_id in retried:
            logger.info("branch %s: stored aggregate %s of a round that had reached its target", branch_id,
                        aggregation_id)
        for branch_id, aggregation_id in timed_out:
            logger.info("branch %s: round timed out; aggregated %s from the leaves that uploaded", branch_id,
                        aggregation_id)
        for branch_id, aggregation_id in retried + timed_out:
            await context.connections.notify_aggregation(branch_id, aggregation_id)


def create_app(settings: AggregatorSettings | None = None) -> FastAPI:
    settings = settings or AggregatorSettings()
    context = build_context(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for branch_id, aggregation_id in await run_in_threadpool(context.service.recover):
            logger.info("recovered aggregation %s of branch %s after a restart", aggregation_id, branch_id)
        stopping = asyncio.Event()
        watcher = asyncio.create_task(finish_overdue_rounds(context, stopping))
        yield
        # Not cancelled: a check running in a worker thread would go on after the pool below is disposed, and
        # its connection would stay open until the collector found it (psycopg warns then, in whatever runs next).
        stopping.set()
        done, _ = await asyncio.wait({watcher}, timeout=WATCHER_STOP_TIMEOUT_S)
        if not done:  # a check stuck on the blob store or the database: stop without it
            logger.warning("the round-timeout check did not finish within %.0f s of the stop; stopping without it",
                           WATCHER_STOP_TIMEOUT_S)
            watcher.cancel()
        elif watcher.exception() is not None:
            logger.error("the round-timeout check failed while the server stopped: %r", watcher.exception())
        context.ingest.shutdown()
        context.service.close()
        context.engine.dispose()

    docs = settings.serve_api_docs
    app = FastAPI(
        title="fedgrove aggregator",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.context = context

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status_code)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail).lower()}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', '')}"}, status_code=400)

    @app.exception_handler(BlobStoreUnavailable)
    async def blob_store_unavailable(_request: Request, exc: BlobStoreUnavailable) -> JSONResponse:
        # The store's own message names bucket and endpoint: for the operator's log, not for the leaves.
        logger.error("blob store unavailable, request refused with 503: %s", exc)
        return JSONResponse({"error": "blob store unavailable; try again later"}, status_code=503)

    @app.exception_handler(DataError)
    async def value_the_database_cannot_store(_request: Request, exc: DataError) -> JSONResponse:
        # PostgreSQL refuses what SQLite stores: text past its column's length, a NUL character (in a path, say).
        # The driver's message quotes the statement's values: logged by type only.
        logger.warning("request refused with 400: the database cannot store a value of it (%s)",
                       type(exc.orig).__name__)
        return JSONResponse({"error": "invalid request: a value too long, or holding a NUL character, for the "
                                      "database to store"}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    for module in (run, branch_config, files, performance, ws, admin):
        app.include_router(module.router)
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        upload_paths=("/api/v1/file/upload",),
        idle_timeout_s=settings.body_idle_timeout_s,
    )
    return app

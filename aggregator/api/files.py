"""Uploads of leaf archives, download links for aggregates, and the signed local download itself."""

from __future__ import annotations

import asyncio
import os
from functools import partial
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from aggregator.api.context import ServerContext
from aggregator.api.deps import Context, CurrentLeaf
from aggregator.blobstore_errors import BlobNotFound
from aggregator.errors import BadRequest, Conflict, NotFound
from aggregator.statuses import RunStatus
from aggregator.downloads import check_file_id
from aggregator.upload_stream import receive_file_part
from aggregator.zip_directory import declared_inflated_bytes

router = APIRouter()


@router.post("/api/v1/file/upload", status_code=201)
async def upload_file(request: Request, leaf: CurrentLeaf, context: Context) -> dict:
    declared_size = request.headers.get("x-bk-file-size")
    declared_digest = request.headers.get("x-bk-file-digest")
    if declared_size is None:
        raise BadRequest("missing x-bk-file-size header")
    if declared_digest is None:
        raise BadRequest("missing x-bk-file-digest header")
    # Kept after its first read: checked without a hop to a worker thread (see `branch_rows`).
    branch = context.registry.branches.kept(leaf.branch_id) or await run_in_threadpool(
        context.registry.branch, leaf.branch_id)
    if branch.run_status != RunStatus.START:
        raise Conflict(f"run is not started (run status: {branch.run_status})")
    received = await receive_file_part(request, context.scratch_dir)
    try:
        if str(received.size) != declared_size.strip():
            raise BadRequest("file size does not match x-bk-file-size")
        if received.digest != declared_digest.strip():
            raise BadRequest("file digest does not match x-bk-file-digest")
        inflated = await run_in_threadpool(
            declared_inflated_bytes, received.path, max_entries=context.settings.max_archive_entries
        )
        ingest = partial(context.service.read_and_ingest, leaf, received.path, digest=received.digest)
        ingesting = context.ingest.submit(leaf.branch_id, inflated, ingest)
        result = await asyncio.wrap_future(ingesting)
    finally:
        received.path.unlink(missing_ok=True)  # gone already once the blob store took it
    if result.completed_aggregation_id is not None:
        await context.connections.notify_aggregation(leaf.branch_id, result.completed_aggregation_id)
    return {"data": {"file_id": result.file_id}}


@router.get("/api/v1/file/download/{file_id:path}")
async def download_link(file_id: str, request: Request, leaf: CurrentLeaf, context: Context) -> dict:
    ttl = context.settings.download_url_ttl_s

    def authorised_url() -> str | None:  # one hop to a worker thread for both
        context.service.authorise_download(leaf, file_id)
        return context.blobs.presigned_url(file_id, expires_in=ttl)

    url = await run_in_threadpool(authorised_url)
    if url is None:
        base = context.settings.public_url or str(request.base_url)  # the request's Host header, when not configured
        url = f"{base.rstrip('/')}/blobs/{file_id}?{context.signer.query(file_id, ttl_s=ttl)}"
    return {"data": {"download_url": url}}


# An aggregate this size or smaller is read in one hop to a worker thread and sent from memory; a larger one
# is streamed by FileResponse (a hop for each of open, read and close, per 64 KiB chunk).
READ_WHOLE_BYTES = 1 << 20


@router.get("/blobs/{file_id}")
async def signed_download(file_id: str, context: Context, expires: int = 0, signature: str = "") -> Response:
    check_file_id(file_id)
    context.signer.verify(file_id, expires=expires, signature=signature)
    found = await run_in_threadpool(_small_blob_or_stat, context, file_id)
    disposition = {"content-disposition": f'attachment; filename="{file_id}.npz"'}
    if isinstance(found, bytes):
        return Response(found, media_type="application/octet-stream", headers=disposition)
    path, stat_result = found
    return FileResponse(path, media_type="application/octet-stream", headers=disposition, stat_result=stat_result)


def _small_blob_or_stat(context: ServerContext, file_id: str) -> bytes | tuple[Path, os.stat_result]:
    """The blob's bytes when it is at most READ_WHOLE_BYTES, else its path and stat; NotFound without one."""
    try:
        path = context.blobs.local_path(file_id)
        if path is None:
            raise NotFound("file not found")
        with open(path, "rb") as handle:
            stat_result = os.fstat(handle.fileno())
            if stat_result.st_size <= READ_WHOLE_BYTES:
                return handle.read()
    except (BlobNotFound, FileNotFoundError) as exc:
        raise NotFound("file not found") from exc
    return path, stat_result

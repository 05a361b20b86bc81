"""Everything a request handler needs, built once per app by `create_app`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from aggregator.blobstore import BlobStore
from aggregator.config import AggregatorSettings
from aggregator.notifier import ConnectionManager, TicketBook
from aggregator.registry import Registry
from aggregator.rounds import AggregationService
from aggregator.security import UrlSigner


@dataclass
class ServerContext:
    settings: AggregatorSettings
    sessions: sessionmaker
    registry: Registry
    service: AggregationService
    blobs: BlobStore
    connections: ConnectionManager
    tickets: TicketBook
    signer: UrlSigner
    admin_token: str
    scratch_dir: Path
    loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once started
    # Decoded archives wait for the branch lock; bounding how many are decoded at once bounds memory.
    ingest_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))

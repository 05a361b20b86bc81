"""Everything a request handler needs, built once per app by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from aggregator.blobstore import BlobStore
from aggregator.branch_report import BranchReports
from aggregator.config import AggregatorSettings
from aggregator.ingest_lanes import IngestLanes
from aggregator.metrics import MetricsStore
from aggregator.notifier import ConnectionManager
from aggregator.registry import Registry
from aggregator.rounds import AggregationService
from aggregator.security import UrlSigner
from aggregator.tickets import TicketBook


@dataclass
class ServerContext:
    settings: AggregatorSettings
    engine: Engine  # disposed when the app shuts down: no pooled connection outlives it
    sessions: sessionmaker
    registry: Registry
    service: AggregationService
    reports: BranchReports
    metrics: MetricsStore
    blobs: BlobStore
    connections: ConnectionManager
    tickets: TicketBook
    signer: UrlSigner
    admin_token: str
    scratch_dir: Path
    # Uploads are decoded and folded in by threads of their own (`ingest_lanes`): at most four decoded archives
    # exist at once, and only these threads' malloc arenas hold archive-sized buffers (with the shared request
    # thread pool, every thread's arena kept some, and peak RSS grew with the number of concurrent uploads).
    ingest: IngestLanes = field(default_factory=IngestLanes)

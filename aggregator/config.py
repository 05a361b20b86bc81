"""Settings of one aggregation-server process, read from the environment (prefix FEDGROVE_) and `.env`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class AggregatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDGROVE_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".fedgrove")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/aggregator.db"
    )
    blob_url: str | None = Field(
        default=None, description="s3://bucket/prefix or a folder; default <data_dir>/blobs"
    )
    max_upload_bytes: int = 256 * MIB
    max_body_bytes: int = Field(default=MIB, description="limit of every request body but an upload's")
    body_idle_timeout_s: float = Field(
        default=60, gt=0, description="a request body that sends nothing for this long is answered with 408"
    )
    max_archive_bytes: int = 1024 * MIB
    max_archive_entries: int = 4096
    max_sum_bytes: int = Field(
        default=512 * MIB,
        description="the running aggregate of one open aggregation, 8 bytes a value: 64 Mi parameters, as many "
        "float32 ones as the upload limit lets through",
    )
    download_url_ttl_s: int = 300
    public_url: str | None = Field(
        default=None, description="the server's URL as leaves reach it (behind a proxy, say): download links name "
        "it; without it they name the host the request was sent to"
    )
    keep_aggregates: int = Field(
        default=3, ge=0, description="a branch's newest aggregates kept, besides those a leaf has still to download "
        "(0: all)"
    )
    keep_uploads: bool = Field(
        default=False, description="keep every upload after its round is finished (an audit trail)"
    )
    max_metrics_bytes_per_leaf: int = Field(
        default=16 * MIB, description="the performance reports a leaf may store, in bytes of their data"
    )
    ticket_ttl_s: int = 30
    tickets_per_leaf: int = Field(default=4, ge=1, description="live WebSocket tickets a leaf may hold")
    websockets_per_leaf: int = Field(default=2, ge=1, description="a new one past this closes the leaf's oldest")
    ws_max_message_bytes: int = Field(
        default=4096, description="the largest frame a leaf may send; leaves need send none, only pongs"
    )
    signing_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    serve_api_docs: bool = Field(
        default=False, description="serve /docs, /redoc and /openapi.json (the admin API's too): local development only"
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'aggregator.db').resolve()}"

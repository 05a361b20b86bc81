"""Typed configuration, read from the environment and `.env`: one object per process, built at start-up.

`PipelineSettings` configures a coordinator or a CLI call (prefix FEDGROVE_, plus BRANCHKEY_HOST);
`LeafSettings` holds one organisation's BranchKey credentials (the names the BranchKey–AskAnna guide
uses; LEAF_PASSWORD is accepted for LEAF_SESSION_TOKEN). Secrets are `SecretStr`: they print as
'**********' and are unwrapped only where the official client needs them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from branchkey import Credentials
from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class PipelineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDGROVE_", env_file=".env", extra="ignore")

    work_dir: Path = Path(".fedgrove")
    artifacts: str | None = Field(default=None, description="s3://bucket/prefix, or a folder (default ./runs)")
    branchkey_host: str | None = Field(default=None, validation_alias=AliasChoices("BRANCHKEY_HOST"))
    admin_token: SecretStr | None = None
    leaf_env_dir: Path | None = Field(
        default=None, description="a folder of <organisation>.env files with each leaf's credentials"
    )
    aggregation_timeout_s: float = 120.0
    verify_ssl: bool = True
    site_data: str | None = Field(
        default=None,
        description="this site's own data source (sites mode, `fedgrove leaf`): a path, an s3:// URL, a "
        "block:s3-bucket/<block>/<key> reference, or JSON "
        'such as {"sql": {"url_env": "HOSPITAL_DB", "query": "select * from patients"}}',
    )
    spec: Path | None = Field(
        default=None, description="the spec file the weekly coordinator runs when its run passes none"
    )
    verbose: bool = Field(default=False, description="show what the SDKs print (downloads, notices)")
    prefect_ephemeral_database: Literal["memory", "file"] = Field(
        default="memory",
        description="database of Prefect's temporary server when no Prefect API is configured "
        "(fedgrove.prefect_ephemeral): memory avoids SQLite lock stalls, file keeps the runs' history",
    )

    @property
    def embedded_aggregator_dir(self) -> Path | None:
        """The data folder of the aggregator a local run starts for itself; None when the leaves federate
        elsewhere (BRANCHKEY_HOST, or FEDGROVE_LEAF_ENV_DIR's credentials)."""
        if self.leaf_env_dir is not None or self.branchkey_host:
            return None
        return self.work_dir / "aggregator"


class LeafSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    leaf_id: str = Field(validation_alias=AliasChoices("LEAF_ID", "leaf_id"))
    leaf_name: str = Field(validation_alias=AliasChoices("LEAF_NAME", "leaf_name"))
    session_token: SecretStr = Field(
        validation_alias=AliasChoices("LEAF_SESSION_TOKEN", "LEAF_PASSWORD", "session_token")
    )
    tree_id: str = Field(validation_alias=AliasChoices("TREE_ID", "tree_id"))
    branch_id: str = Field(validation_alias=AliasChoices("BRANCH_ID", "branch_id"))
    owner_id: str = Field(validation_alias=AliasChoices("OWNER_ID", "owner_id"))
    branchkey_host: str = Field(
        default="https://app.branchkey.com", validation_alias=AliasChoices("BRANCHKEY_HOST", "branchkey_host")
    )
    verify_ssl: bool = Field(default=True, validation_alias=AliasChoices("BRANCHKEY_VERIFY_SSL", "verify_ssl"))

    @classmethod
    def load(cls, env_file: Path | None = None) -> LeafSettings:
        """From the environment, or from one leaf's `.env` file when given (its values win)."""
        if env_file is not None and not env_file.is_file():
            raise FileNotFoundError(
                f"leaf credentials file {env_file} does not exist (fix: `fedgrove branch create --env-dir ...` "
                "writes one per leaf)"
            )
        if env_file is None:
            return cls()
        # The file names one leaf; it must win over LEAF_* variables of the process (several leaves
        # may run in one process, each with its own file), so its values go in as arguments.
        values = {key: value for key, value in dotenv_values(env_file).items() if value is not None}
        return cls(_env_file=None, **values)

    @property
    def uses_tls(self) -> bool:
        return self.branchkey_host.startswith("https://")

    def credentials(self) -> Credentials:
        return Credentials(
            id=self.leaf_id,
            name=self.leaf_name,
            session_token=self.session_token.get_secret_value(),
            tree_id=self.tree_id,
            branch_id=self.branch_id,
            owner_id=self.owner_id,
        )


def leaf_env_text(credentials: dict[str, str], host: str) -> str:
    """The `.env` content for one leaf (the format `LeafSettings` reads)."""
    lines = {
        "LEAF_ID": credentials["id"],
        "LEAF_NAME": credentials["name"],
        "LEAF_SESSION_TOKEN": credentials["session_token"],
        "TREE_ID": credentials["tree_id"],
        "BRANCH_ID": credentials["branch_id"],
        "OWNER_ID": credentials["owner_id"],
        "BRANCHKEY_HOST": host,
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def write_leaf_env(path: Path, credentials: dict[str, str], host: str) -> Path:
    """Write a leaf's `.env` readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(leaf_env_text(credentials, host))
    return path

"""The server's own secrets: never empty or short, written whole (issue #17, item 4). An empty admin_token
left by a crash or a `touch` let `Authorization: Bearer ` create branches; an empty signing_key let anyone
sign a download link for any leaf's raw upload."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from aggregator.config import AggregatorSettings
from aggregator.security import WeakSecret
from aggregator.server import ServerThread


def _settings(data_dir: Path, **overrides: object) -> AggregatorSettings:
    return AggregatorSettings(data_dir=data_dir, port=0, _env_file=None, **overrides)


@pytest.mark.parametrize("name", ["admin_token", "signing_key"])
@pytest.mark.parametrize("content", ["", "\n", "31-characters-is-one-too-short!"], ids=["empty", "newline", "short"])
def test_a_server_whose_secret_file_is_empty_or_short_refuses_to_start(tmp_path: Path, name: str, content: str) -> None:
    data_dir = tmp_path / "aggregator"
    data_dir.mkdir()
    (data_dir / name).write_text(content)

    with pytest.raises(WeakSecret) as refused:
        ServerThread(_settings(data_dir))

    assert str(refused.value) == (
        f"expected a secret of at least 32 characters in {data_dir / name}, got {len(content.strip())} (fix: "
        "delete the file to have the server write a new one, or write at least 32 random characters to it)"
    )


def test_a_short_admin_token_in_the_environment_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeakSecret, match=r"^expected a secret of at least 32 characters in FEDGROVE_ADMIN_TOKEN, "
                                         r"got 6 \(fix: "):
        ServerThread(_settings(tmp_path / "aggregator", admin_token="secret"))


def test_new_secrets_are_written_whole_readable_by_the_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "aggregator"
    with ServerThread(_settings(data_dir)):
        pass
    for name in ("admin_token", "signing_key"):
        path = data_dir / name
        assert len(path.read_text().strip()) >= 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".")] == []  # no temporary file left

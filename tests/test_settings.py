"""Leaf credentials: a leaf's own .env file wins over the process environment; tokens stay secret."""

from __future__ import annotations

import pytest

from fedgrove.settings import LeafSettings, write_leaf_env

CREDENTIALS = {
    "id": "leaf-1", "name": "org-1", "session_token": "s3cr3t-token-value", "tree_id": "tree",
    "branch_id": "branch", "owner_id": "owner",
}


def test_a_leafs_env_file_wins_over_leaf_variables_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAF_NAME", "from-the-environment")
    monkeypatch.setenv("LEAF_ID", "other")
    settings = LeafSettings.load(write_leaf_env(tmp_path / "org-1.env", CREDENTIALS, "http://127.0.0.1:1"))
    assert (settings.leaf_name, settings.leaf_id, settings.branchkey_host) == ("org-1", "leaf-1", "http://127.0.0.1:1")
    assert settings.credentials().session_token == "s3cr3t-token-value"


def test_leaf_password_is_accepted_for_the_session_token_and_never_printed(monkeypatch):
    for key, value in {"LEAF_ID": "l", "LEAF_NAME": "n", "LEAF_PASSWORD": "hunter2-hunter2", "TREE_ID": "t",
                       "BRANCH_ID": "b", "OWNER_ID": "o"}.items():
        monkeypatch.setenv(key, value)
    settings = LeafSettings.load()
    assert settings.session_token.get_secret_value() == "hunter2-hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_env_file_is_written_readable_by_its_owner_only(tmp_path):
    path = write_leaf_env(tmp_path / "org-1.env", CREDENTIALS, "http://127.0.0.1:1")
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_missing_env_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"leaf credentials file .*missing.env does not exist \(fix: "):
        LeafSettings.load(tmp_path / "missing.env")

"""A small HTTP client for the admin API, used by the `fedgrove` CLI and the coordinator flow."""

from __future__ import annotations

from pathlib import Path

import httpx

from aggregator.security import WeakSecret, load_or_create_secret


class AdminApiError(RuntimeError):
    pass


def admin_token_from(data_dir: Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    path = data_dir / "admin_token"
    if not path.exists():
        raise AdminApiError(
            f"no admin token: {path} does not exist (fix: pass --data-dir of the running server, "
            "or set FEDGROVE_ADMIN_TOKEN)"
        )
    try:
        return load_or_create_secret(path)
    except WeakSecret as exc:
        raise AdminApiError(str(exc)) from exc


class AdminClient:
    def __init__(self, host: str, token: str, *, verify: bool | str = True, timeout_s: float = 30) -> None:
        self._client = httpx.Client(
            base_url=host.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=timeout_s,
        )

    def _call(self, method: str, path: str, **kwargs: object) -> dict:
        try:
            response = self._client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise AdminApiError(
                f"cannot reach the aggregator at {self._client.base_url}: {exc} "
                "(fix: start it with `fedgrove aggregator serve` or pass --host)"
            ) from exc
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise AdminApiError(f"{method} {path} failed with {response.status_code}: {message}")
        return response.json()

    def create_branch(self, *, tree: str, branch: str, leaves: int, target: int | None = None, **extra: object) -> dict:
        body = {"tree": tree, "branch": branch, "leaves": leaves, "target": target, **extra}
        return self._call("POST", "/admin/v1/branches", json=body)

    def branch_status(self, branch_id: str) -> dict:
        return self._call("GET", f"/admin/v1/branches/{branch_id}")

    def set_run_status(self, branch_id: str, status: str) -> dict:
        return self._call("POST", f"/admin/v1/branches/{branch_id}/run", json={"status": status})

    def metrics(self, branch_id: str, *, page_size: int = 100) -> list[dict]:
        """Every performance report of the branch, oldest first, read a page at a time."""
        rows: list[dict] = []
        after: int | None = 0
        while after is not None:
            page = self._call("GET", f"/admin/v1/branches/{branch_id}/metrics",
                              params={"after": after, "limit": page_size})
            rows.extend(page["metrics"])
            after = page["next_after"]
        return rows

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

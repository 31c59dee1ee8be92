"""StatusClient: a running server's management API over HTTP, with errors a person can act on."""

from __future__ import annotations

import urllib.parse
from types import TracebackType
from typing import Any

import httpx


class RemoteError(Exception):
    """A call to the server failed; ``str(err)`` says why and what to do, in one line."""


class StatusClient:
    """``GET /v1/status`` and ``/v1/tenants``, the OIP repository (index, load, unload), pin.

    Args:
        url: the server's base URL (``http://host:port``, optionally with a path prefix;
            ``host:port`` alone means ``http://``).
        api_key: sent as ``Authorization: Bearer <key>`` when the server checks keys.
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 10.0) -> None:
        # "127.0.0.1:8080" is what people type: the server speaks plain HTTP unless told.
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._http: httpx.Client | None = None

    def __enter__(self) -> StatusClient:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=self._timeout_s)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def status(self) -> dict[str, Any]:
        doc = self._call("GET", "/v1/status")
        if not isinstance(doc, dict) or "memory" not in doc:
            raise RemoteError(f"{self.url} answered /v1/status without a status document")
        return doc

    def tenants(self) -> dict[str, Any]:
        doc = self._call("GET", "/v1/tenants")
        if not isinstance(doc, dict) or "tenants" not in doc:
            raise RemoteError(f"{self.url} answered /v1/tenants without a tenants document")
        return doc

    def index(self) -> list[dict[str, Any]]:
        """Every model in the server's store, with its state (``READY`` when resident)."""
        doc = self._call("POST", "/v2/repository/index", json={})
        return doc if isinstance(doc, list) else []

    def load(self, model_id: str) -> None:
        self._call("POST", f"/v2/repository/models/{_quote(model_id)}/load")

    def unload(self, model_id: str) -> None:
        self._call("POST", f"/v2/repository/models/{_quote(model_id)}/unload")

    def pin(self, model_id: str, pinned: bool = True) -> None:
        action = "pin" if pinned else "unpin"
        self._call("POST", f"/v1/models/{_quote(model_id)}/{action}")

    def promote(self, model_id: str, version: int, alias: str) -> dict[str, Any]:
        """Load ``version`` of ``model_id`` and point ``alias`` at it; the server's answer."""
        body = {"version": version, "alias": alias}
        doc = self._call("POST", f"/v1/models/{_quote(model_id)}/promote", json=body)
        if not isinstance(doc, dict) or "version" not in doc:
            raise RemoteError(f"{self.url} answered promote without the version it set")
        return doc

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._http is None:
            raise RuntimeError("use StatusClient as a context manager")
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise RemoteError(
                f"tenantserve at {self.url} did not answer within {self._timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise RemoteError(
                f"cannot reach tenantserve at {self.url} ({_reason(exc)}); is the server "
                "running? Pass its address with --url or TENANTSERVE_URL"
            ) from None
        if response.status_code in (401, 403):
            hint = (
                "pass an API key with --api-key or TENANTSERVE_API_KEY"
                if response.status_code == 401
                else "this API key may not do that (it needs the manage role)"
            )
            raise RemoteError(f"{_message(response)}: {hint}")
        if response.status_code >= 400:
            raise RemoteError(f"{response.status_code}: {_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise RemoteError(
                f"{self.url}{path} answered {response.status_code} with something other than "
                "JSON: is this a tenantserve server?"
            ) from None


def _quote(model_id: str) -> str:
    # Ids keep their '/' (the server's routes take the rest of the path); the rest is escaped.
    return urllib.parse.quote(model_id, safe="/")


def _message(response: httpx.Response) -> str:
    try:
        doc = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return response.reason_phrase or f"HTTP {response.status_code}"


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc).strip()
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:120] if text else type(exc).__name__

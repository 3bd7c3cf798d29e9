"""An Azure Resource Manager client on httpx that behaves as Azure's own SDKs do (reference/anchors.md 2.6):

- a bearer token from an azure-identity credential (scope https://management.azure.com/.default), refreshed five
  minutes before it expires; the token never reaches a log, a record or an error message;
- 429 and 5xx retried with backoff, honouring Retry-After (seconds) and the retryable error codes;
- long-running operations: Azure-AsyncOperation preferred, then Location; Retry-After honoured, 60 s when absent;
  an error from the *status* URL is a failed read, retried, never a failed operation;
- lists followed by nextLink, sent as it is (it carries its own api-version and $skipToken: httpx's `params=`
  would replace that query);
- x-ms-request-id and x-ms-correlation-request-id in every log line and error.

Plain http and a missing credential are refused except towards a loopback simulator."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from hciupgrade.models import is_loopback

log = logging.getLogger(__name__)

SCOPE = "https://management.azure.com/.default"
TERMINAL = {"succeeded", "failed", "canceled", "cancelled"}
RETRYABLE_CODES = {"RetryableErrorDueToAnotherOperation", "TooManyRequests", "ServerBusy", "InternalServerError",
                   "ServiceUnavailable", "GatewayTimeout"}


class TokenCredential(Protocol):  # azure.core.credentials.TokenCredential
    def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...


class ArmError(RuntimeError):
    """An ARM request or operation that failed, with what support asks for (never the token)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 request_id: str | None = None, correlation_id: str | None = None) -> None:
        ids = ", ".join(f"{k} {v}" for k, v in (("x-ms-request-id", request_id),
                                                   ("x-ms-correlation-request-id", correlation_id)) if v)
        super().__init__(f"{message}" + (f" ({ids})" if ids else ""))
        self.status, self.code, self.request_id, self.correlation_id = status, code, request_id, correlation_id


class OperationFailed(ArmError):
    """A long-running operation that ended Failed or Canceled."""


@dataclass
class Operation:
    """A long-running operation: where to poll, and the resource it works on."""

    status_url: str | None  # Azure-AsyncOperation
    location_url: str | None  # Location
    resource_url: str
    retry_after: float


class ArmClient:
    def __init__(self, endpoint: str = "https://management.azure.com", *, credential: TokenCredential | None,
                 scope: str = SCOPE, time_factor: float = 1.0, max_retries: int = 6,
                 default_retry_after: float = 60.0, transport: httpx.BaseTransport | None = None,
                 correlation_id: str | None = None) -> None:
        host = urlsplit(endpoint).hostname or ""
        if urlsplit(endpoint).scheme != "https" and not is_loopback(host):
            raise ValueError(f"azure.endpoint {endpoint}: ARM is reached over https (plain http only to a loopback "
                             "simulator)")
        if credential is None and not is_loopback(host):
            raise ValueError("azure.credential: a credential is required towards Azure (none only for a loopback "
                             "simulator)")
        self.endpoint = endpoint.rstrip("/")
        self.credential, self.scope = credential, scope
        self.time_factor = time_factor  # the simulator's clock: Retry-After is in its seconds
        self.max_retries, self.default_retry_after = max_retries, default_retry_after
        self.correlation_id = correlation_id or str(uuid.uuid4())
        self._token: Any = None
        self._http = httpx.Client(timeout=httpx.Timeout(30.0), transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---------------------------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / self.time_factor)

    def _headers(self) -> dict[str, str]:
        headers = {"x-ms-correlation-request-id": self.correlation_id, "Accept": "application/json"}
        if self.credential is not None:
            if self._token is None or self._token.expires_on - time.time() < 300:
                self._token = self.credential.get_token(self.scope)
            headers["Authorization"] = f"Bearer {self._token.token}"
        return headers

    def url(self, path_or_url: str, api_version: str | None) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url  # a nextLink or an operation URL: its own query is kept
        sep = "&" if "?" in path_or_url else "?"
        return f"{self.endpoint}{path_or_url}" + (f"{sep}api-version={api_version}" if api_version else "")

    def retry_after(self, response: httpx.Response) -> float:
        value = response.headers.get("Retry-After")
        try:
            return max(float(value), 0.0) if value is not None else self.default_retry_after
        except ValueError:
            return self.default_retry_after  # an http-date: ARM documents seconds

    def request(self, method: str, path_or_url: str, *, api_version: str | None = None,
                json: Any = None) -> httpx.Response:
        """One request, retried on 429, 5xx and retryable error codes (Retry-After, else exponential backoff)."""
        url = self.url(path_or_url, api_version)
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, url, json=json, headers=self._headers())
            except httpx.TransportError as e:
                if attempt == self.max_retries:
                    raise ArmError(f"{method} {_short(url)}: {type(e).__name__}: {e}") from None
                self.sleep(min(2 ** attempt, 60))
                continue
            request_id = response.headers.get("x-ms-request-id")
            code = _error_code(response)
            retryable = response.status_code == 429 or response.status_code >= 500 or code in RETRYABLE_CODES
            log.debug("%s %s -> %s (x-ms-request-id %s, x-ms-correlation-request-id %s)", method, _short(url),
                      response.status_code, request_id, self.correlation_id)
            if response.status_code < 400 or not retryable or attempt == self.max_retries:
                if response.status_code >= 400:
                    raise ArmError(f"{method} {_short(url)}: {response.status_code} {code or ''}: "
                                   f"{_error_message(response)}".replace(":  ", ": "),
                                   status=response.status_code, code=code, request_id=request_id,
                                   correlation_id=self.correlation_id)
                return response
            wait = self.retry_after(response) if "Retry-After" in response.headers else min(2 ** attempt, 60)
            log.info("%s %s: %s %s, retrying in %.0f s (x-ms-request-id %s)", method, _short(url),
                     response.status_code, code or "", wait, request_id)
            self.sleep(wait)
        raise AssertionError("unreachable")

    # --- verbs ------------------------------------------------------------------------------------------------
    def get(self, path: str, api_version: str | None = None) -> dict[str, Any]:
        return self.request("GET", path, api_version=api_version).json()

    def get_or_none(self, path: str, api_version: str | None = None) -> dict[str, Any] | None:
        try:
            return self.get(path, api_version)
        except ArmError as e:
            if e.status == 404:
                return None
            raise

    def list(self, path: str, api_version: str | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a list, page after page (nextLink as it is)."""
        url: str | None = self.url(path, api_version)
        while url:
            page = self.request("GET", url).json()
            yield from page.get("value", [])
            url = page.get("nextLink")

    def begin(self, method: str, path: str, api_version: str, body: Any = None) -> tuple[httpx.Response, Operation]:
        """Start a long-running operation (PUT, POST, DELETE); returns the first response and how to follow it."""
        response = self.request(method, path, api_version=api_version, json=body)
        return response, Operation(response.headers.get("Azure-AsyncOperation"), response.headers.get("Location"),
                                   self.url(path, api_version), self.retry_after(response))

    def wait(self, op: Operation, *, on_poll: Callable[[dict[str, Any]], None] | None = None,
             timeout_s: float = 24 * 3600) -> dict[str, Any]:
        """Follow an operation to its end; returns its last status document. Errors reading the status URL are
        retried (the operation goes on); a Failed or Canceled status raises OperationFailed."""
        waited = 0.0
        delay = op.retry_after
        while waited < timeout_s:
            self.sleep(delay)
            waited += delay
            try:
                if op.status_url:
                    response = self.request("GET", op.status_url)
                    status = response.json()
                    state = str(status.get("status", "")).lower()
                elif op.location_url:
                    response = self.request("GET", op.location_url)
                    status = response.json() if response.content else {}
                    state = "inprogress" if response.status_code == 202 else "succeeded"
                else:
                    status = self.get(op.resource_url)
                    state = str(status.get("properties", {}).get("provisioningState", "Succeeded")).lower()
            except ArmError as e:
                if e.status is not None and e.status < 500 and e.status != 429:
                    raise
                log.warning("reading the operation's status failed (%s): the operation goes on; reading again", e)
                delay = self.default_retry_after
                continue
            if on_poll:
                on_poll(status)
            delay = self.retry_after(response) if "Retry-After" in response.headers else self.default_retry_after
            if state in TERMINAL:
                if state != "succeeded":
                    error = status.get("error") or {}
                    raise OperationFailed(f"the operation ended {status.get('status')}: {error.get('code', '')} "
                                          f"{error.get('message', '')}".strip(), code=error.get("code"),
                                          request_id=response.headers.get("x-ms-request-id"),
                                          correlation_id=self.correlation_id)
                return status
        raise ArmError(f"the operation did not end within {timeout_s / 3600:.0f} h")


def _short(url: str) -> str:
    """A URL for a log line: path and api-version, no host noise."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _error_code(response: httpx.Response) -> str | None:
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return (body.get("error") or {}).get("code") if isinstance(body, dict) else None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str((body.get("error") or {}).get("message", "")) if isinstance(body, dict) else ""
    except ValueError:
        return response.text[:200]

"""An Azure Resource Manager client on httpx that behaves as Azure's own SDKs do (reference/anchors.md 2.6):

- a bearer token from an azure-identity credential (scope https://management.azure.com/.default), refreshed five
  minutes before it expires; the token never reaches a log, a record or an error message;
- 429 and 5xx retried with backoff, honouring Retry-After (seconds) and the retryable error codes;
- a *submit* (a PUT or POST that starts work: apply, Validate, Deploy) is sent again only when it surely did not
  arrive (the connection was refused, or a 429): after a read timeout, a dropped answer or a 5xx it may have been
  taken, so `SubmitUncertain` is raised and the caller reads the resource instead. azure-core's RetryPolicy is the
  model: it never retries a POST after a read error (policies/_retry.py, `_is_method_retryable`), and a second
  apply meets 409 while the first installs;
- long-running operations: Azure-AsyncOperation preferred, then Location; Retry-After honoured, 60 s when absent;
  an error from the *status* URL is a failed read, not a failed operation: transient within a budget (a fresh
  operation id answers 404 while ARM replicates it: MicrosoftDocs azure-resource-manager async-operations);
- lists followed by nextLink, sent as it is (it carries its own api-version and $skipToken: httpx's `params=`
  would replace that query);
- x-ms-request-id and x-ms-correlation-request-id in every log line and error.

Plain http and a missing credential are refused except towards a loopback simulator."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from hciupgrade.net import is_loopback

log = logging.getLogger(__name__)

SCOPE = "https://management.azure.com/.default"
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


class SubmitUncertain(ArmError):
    """A submit whose answer was lost (read timeout, dropped connection, 5xx): Azure may have taken it."""


@dataclass
class Operation:
    """A long-running operation: where to poll, the resource it works on, and when it was accepted (cluster
    seconds of this client's clock, for the grace given to a fresh operation id)."""

    status_url: str | None  # Azure-AsyncOperation
    location_url: str | None  # Location
    resource_url: str
    retry_after: float
    accepted_at: float = 0.0


@dataclass
class OperationRead:
    """One read of an operation's status: `state` is succeeded, failed, running, or unread (the read failed in
    a way that says nothing of the operation); `wait` is what to wait before the next read."""

    state: str
    document: dict[str, Any]
    wait: float
    note: str = ""


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

    def now(self) -> float:
        """Seconds of the cluster's clock (wall seconds x time_factor), for deadlines and stall budgets."""
        return time.monotonic() * self.time_factor

    def request(self, method: str, path_or_url: str, *, api_version: str | None = None,
                json: Any = None, submit: bool = False) -> httpx.Response:
        """One request, retried on 429, 5xx and retryable error codes (Retry-After, else exponential backoff). A
        `submit` is retried only when it surely did not arrive (connection refused, 429); otherwise its lost
        answer raises SubmitUncertain."""
        url = self.url(path_or_url, api_version)
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, url, json=json, headers=self._headers())
            except httpx.TransportError as e:
                unsent = isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
                if submit and not unsent:
                    raise SubmitUncertain(f"{method} {_short(url)}: {type(e).__name__} after it was sent: Azure "
                                          "may have taken it", correlation_id=self.correlation_id) from None
                if attempt == self.max_retries:
                    raise ArmError(f"{method} {_short(url)}: {type(e).__name__}: {e}") from None
                self.sleep(min(2 ** attempt, 60))
                continue
            request_id = response.headers.get("x-ms-request-id")
            code = _error_code(response)
            if submit and response.status_code >= 500:
                raise SubmitUncertain(f"{method} {_short(url)}: {response.status_code} {code or ''}: Azure may have "
                                      "taken it", status=response.status_code, code=code, request_id=request_id,
                                      correlation_id=self.correlation_id)
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
        """Submit a long-running operation (PUT, POST); returns the first response and how to follow it."""
        response = self.request(method, path, api_version=api_version, json=body, submit=True)
        return response, Operation(response.headers.get("Azure-AsyncOperation"), response.headers.get("Location"),
                                   self.url(path, api_version), self.retry_after(response), self.now())

    def read_operation(self, op: Operation, *, grace_s: float = 600.0) -> OperationRead:
        """Read an operation's status once. An error reading it (a 404 while ARM replicates a fresh id, a 5xx, a
        lost answer) is `unread` for `grace_s` cluster seconds after the last good read, then raised: a status
        URL is never taken for the operation's verdict by its own failure."""
        url = op.status_url or op.location_url
        if url is None:  # neither header: the resource's provisioningState is the operation's
            url = op.resource_url
        try:
            response = self.request("GET", url)
        except ArmError as e:
            if e.status in (401, 403) or self.now() - op.accepted_at > grace_s:
                raise
            return OperationRead("unread", {}, self.default_retry_after if e.status is None or e.status >= 500
                                 else max(op.retry_after, 10.0), note=str(e))
        op.accepted_at = self.now()  # the grace runs from the last good read
        wait = self.retry_after(response) if "Retry-After" in response.headers else self.default_retry_after
        document = response.json() if response.content else {}
        if url == op.status_url:
            word = str(document.get("status", ""))
        elif url == op.location_url:
            word = "InProgress" if response.status_code == 202 else "Succeeded"
        else:
            word = str(document.get("properties", {}).get("provisioningState", "Succeeded"))
        state = word.lower()
        state = "succeeded" if state == "succeeded" else ("failed" if state in ("failed", "canceled", "cancelled")
                                                          else "running")
        return OperationRead(state, document, wait)


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

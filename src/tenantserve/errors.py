"""One exception tree for the whole server; HTTP codes live only in protocols/errors.py.

::

    TenantServeError
    ├── InvalidRequest            the caller sent something we cannot act on
    │   ├── InvalidModelId        a model id that is not a safe relative path
    │   ├── InvalidInput          tensors that do not match the model (name, shape, dtype)
    │   └── PayloadTooLarge       a body over the configured size
    ├── Unauthenticated           no API key, or one the server does not know (401)
    ├── Forbidden                 a known key used outside its model scope or roles, or an
    │                             artifact that links out of its folder or tenant (403)
    ├── ModelNotFound             no artifact under that id in the store
    ├── ModelAlreadyLoaded        explicit load of a resident model (SageMaker 409)
    ├── ModelNotReady             still loading past the caller's wait limit
    ├── InsufficientMemory        cannot fit within the byte budget (SageMaker 507)
    ├── Overloaded                admission queue full or deadline passed (503 + Retry-After)
    │   ├── QueueTimedOut         dropped unrun from a queue past its deadline (503)
    │   └── TenantLimitExceeded   a tenant over its rate or concurrency quota (429 + Retry-After)
    ├── LoadFailed                the artifact could not be fetched or turned into a model
    │   └── StoreUnavailable      the store could not be reached
    │       └── StoreUnreachable  not even a connection (refused, unknown host, connect timeout)
    └── PredictFailed             the model raised while predicting
        └── PredictTimedOut       the model ran past the predict timeout (504)
"""

from __future__ import annotations


class TenantServeError(Exception):
    """Base of every error the server raises on purpose; ``str(err)`` is safe to show callers."""


class InvalidRequest(TenantServeError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""


class InvalidModelId(InvalidRequest):
    """A model id that is empty, too long, or not a safe relative path."""


class InvalidInput(InvalidRequest):
    """Input tensors that do not match the model's signature."""


class PayloadTooLarge(InvalidRequest):
    """A request body over the configured maximum."""


class Unauthenticated(TenantServeError):
    """No credentials, or credentials the server does not recognise (never echoed back)."""


class Forbidden(TenantServeError):
    """Known credentials used for a model outside their scope, or without the needed role;
    or an artifact in a local store whose links lead out of its folder or its tenant's."""


class ModelNotFound(TenantServeError):
    """No model by that id exists in the store (or is resident, for unload)."""


class ModelAlreadyLoaded(TenantServeError):
    """An explicit load of a model that is already resident."""


class ModelNotReady(TenantServeError):
    """The model is still loading and the caller's wait limit has passed."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InsufficientMemory(TenantServeError):
    """The model cannot fit in the memory budget, even after evicting what may be evicted."""


class Overloaded(TenantServeError):
    """Too much work in flight; the caller should retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LoadFailed(TenantServeError):
    """The artifact was found but could not be fetched, unpacked or loaded."""


class MissingExtra(LoadFailed):
    """The artifact needs an optional part this server was installed without (an extra)."""


class StoreUnavailable(LoadFailed):
    """The store did not answer (network, credentials, server errors)."""

    retry_after_s: float = 1.0
    """What a caller is told to wait (Retry-After): until the server will try the store again."""

    def __init__(self, message: str, *, operator_hint: str = "") -> None:
        super().__init__(message)
        self.operator_hint = operator_hint
        """What to fix, for the operator's eyes only (logs, start-up errors, the manage role's
        status): it may name the store's URL, endpoint and local paths, which callers never
        see."""

    def for_operator(self) -> str:
        return f"{self}; {self.operator_hint}" if self.operator_hint else str(self)


class StoreUnreachable(StoreUnavailable):
    """No connection to the store at all: retried briefly, not for the whole retry deadline.

    A refused connection or an unknown host is a store that is down or misconfigured, not a
    slow one: callers hear so in seconds.
    """


class PredictFailed(TenantServeError):
    """The model raised while running a request."""


class PredictTimedOut(PredictFailed):
    """The model ran longer than the predict timeout; its run was told to stop."""


class QueueTimedOut(Overloaded):
    """A request waited in a queue past its deadline (or CoDel's cut) and was dropped unrun."""


class TenantLimitExceeded(Overloaded):
    """One tenant is over its own rate or concurrency quota; other tenants are unaffected."""

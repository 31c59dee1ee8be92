"""Who is calling and what they may touch: API keys or AWS SigV4, then scope and role checks.

A key arrives as ``Authorization: Bearer <key>`` or ``X-Api-Key: <key>``; boto3 clients sign
with SigV4 (``Authorization: AWS4-HMAC-SHA256 Credential=<access key id>/…``) and are checked
against the key's AWS pair. Authentication runs before the route handler (401); the handler
then checks the parsed model id against the key's scopes (403) before the service, the cache or
the store see it, so a 403 answers for another tenant's model whether it exists or not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive

from tenantserve.errors import Forbidden, InvalidModelId, PayloadTooLarge, Unauthenticated
from tenantserve.logging import model_var
from tenantserve.protocols import sigv4
from tenantserve.protocols.keys import ANONYMOUS, KeyRing, Principal, Role
from tenantserve.types import ModelId

Handler = Callable[[Request], Awaitable[Response]]

API_KEY_HEADER = "x-api-key"
MISSING_CREDENTIALS = (
    "missing credentials: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'"
)
_BEARER = "bearer "


class Access:
    """Authentication for protected routes; ``keys=None`` turns it off (loopback servers)."""

    def __init__(self, keys: KeyRing | None, *, max_body_bytes: int) -> None:
        self._keys = keys
        self._max_body_bytes = max_body_bytes

    @property
    def enabled(self) -> bool:
        return self._keys is not None

    def protect(self, handler: Handler, role: Role, *, every_tenant: bool = False) -> Handler:
        """``handler`` behind authentication and ``role``; the principal lands in
        ``request.state.principal`` for :func:`authorize`. ``every_tenant``: the route shows
        all tenants' models at once, so only a key scoped to ``*`` may call it."""

        async def endpoint(request: Request) -> Response:
            return await handler(await self.admit(request, role, every_tenant=every_tenant))

        return endpoint

    async def admit(self, request: Request, role: Role, *, every_tenant: bool = False) -> Request:
        """The request to go on with, its caller authenticated and holding ``role`` (the
        principal lands in ``request.state.principal`` for :func:`authorize`).

        Raises:
            Unauthenticated: no credentials, or ones no configured key matches.
            Forbidden: the key lacks ``role``, or ``every_tenant`` and a scope short of ``*``.
        """
        principal, request = await self.authenticate(request)
        require_role(principal, role)
        if every_tenant and "*" not in principal.scopes:
            raise Forbidden("this route shows every tenant's models: it needs scope '*'")
        request.state.principal = principal
        return request

    async def authenticate(self, request: Request) -> tuple[Principal, Request]:
        """The caller's principal, and the request to go on with (a SigV4 check reads the
        body, so the request returned replays it).

        Raises:
            Unauthenticated: no credentials, or ones no configured key matches.
        """
        headers = request.headers
        authorization = headers.get("authorization", "")
        principal = self.from_key(headers.get(API_KEY_HEADER), authorization)
        if principal is not None:
            return principal, request
        if self._keys is not None and authorization.startswith(sigv4.ALGORITHM):
            return await self._sigv4(self._keys, request, authorization)
        raise Unauthenticated(MISSING_CREDENTIALS)

    def from_key(self, api_key: str | None, authorization: str) -> Principal | None:
        """The principal of an API key sent as ``X-Api-Key`` (``api_key``) or as
        ``Authorization: Bearer`` (``authorization``), headers or gRPC metadata alike:
        :data:`ANONYMOUS` while keys are off, ``None`` when no key was sent.

        Raises:
            Unauthenticated: a key that no configured key matches.
        """
        keys = self._keys
        if keys is None:
            return ANONYMOUS
        token = api_key
        if token is None and authorization[: len(_BEARER)].lower() == _BEARER:
            token = authorization[len(_BEARER) :].strip()
        if token is None:
            return None
        principal = keys.find(token)
        if principal is None:
            raise Unauthenticated("API key not recognised")
        return principal

    async def _sigv4(
        self, keys: KeyRing, request: Request, authorization: str
    ) -> tuple[Principal, Request]:
        signed = sigv4.parse(authorization)
        found = keys.aws_credential(signed.access_key_id)
        if found is None:
            raise Unauthenticated("AWS access key id not recognised")
        secret, principal = found
        body = await self._raw_body(request)
        sigv4.verify(
            signed,
            secret_access_key=secret,
            method=request.method,
            raw_path=request.scope.get("raw_path") or request.url.path.encode(),
            query=request.scope.get("query_string", b""),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            body=body,
        )
        return principal, Request(request.scope, _replay(body, request.receive))

    async def _raw_body(self, request: Request) -> bytes:
        """The body as sent (the signature covers the encoded bytes), under the size cap."""
        limit = self._max_body_bytes
        message = f"request body is larger than the limit of {limit} bytes"
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(message)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(message)
        return bytes(body)


def authorize(request: Request, model_id: ModelId) -> None:
    """Refuse ``model_id`` unless the request's key covers it (call before any store access);
    once allowed, it is the model the request's log lines name.

    Raises:
        Forbidden: outside the key's scopes, whether or not such a model exists.
    """
    authorize_principal(_principal(request), model_id)


def authorize_principal(principal: Principal, model_id: ModelId) -> None:
    """:func:`authorize` for a principal a protocol found itself (gRPC's metadata).

    Raises:
        Forbidden: outside the key's scopes, whether or not such a model exists.
    """
    if not principal.covers(model_id):
        raise Forbidden(f"this key may not use model {model_id}")
    # Every route that names a model comes through here: from now on this request's log lines
    # (a load, an eviction it causes, a warning) carry its model and tenant. Each request runs
    # in its own task, so the value ends with the request.
    model_var.set(model_id.value)


def require_role(principal: Principal, role: Role) -> None:
    """Refuse a principal without ``role``.

    Raises:
        Forbidden: the key does not grant ``role``.
    """
    if not principal.has(role):
        raise Forbidden(f"this key does not have the {role.value!r} role")


def covers(request: Request, model_id: str) -> bool:
    """Whether the request's key covers ``model_id`` (to filter listings)."""
    return principal_covers(_principal(request), model_id)


def principal_covers(principal: Principal, model_id: str) -> bool:
    """Whether ``principal`` covers ``model_id``, a listed id (never an invalid one)."""
    try:
        return principal.covers(ModelId.parse(model_id))
    except InvalidModelId:
        return False


def _principal(request: Request) -> Principal:
    # Fails closed: a route that skipped Access.protect has no principal and gets nothing.
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthenticated("this route needs credentials")
    return principal


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that gives ``body`` once, then whatever the client sends next
    (``http.disconnect``), so a handler reads the body again and still sees the client leave."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

"""API keys: which model-id prefixes and roles each key grants; only key digests are kept."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from tenantserve.documents import read_document
from tenantserve.errors import InvalidModelId
from tenantserve.types import ModelId

MIN_KEY_CHARS = 16
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_FIELDS = frozenset(
    {"name", "key", "key_sha256", "scopes", "roles", "aws_access_key_id", "aws_secret_access_key"}
)


class Role(StrEnum):
    """What a key may do: run models, manage residency (load, unload, list), read metrics."""

    INVOKE = "invoke"
    MANAGE = "manage"
    METRICS = "metrics"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: a key's name (safe to log), its scopes and its roles.

    A scope is ``*`` (every model), ``<prefix>/*`` (every id under that prefix, the shape of
    SageMaker's ``sagemaker:TargetModel`` condition) or one exact model id.
    """

    name: str
    scopes: tuple[str, ...]
    roles: frozenset[Role]

    def has(self, role: Role) -> bool:
        return role in self.roles

    def covers(self, model_id: ModelId) -> bool:
        value = model_id.value
        for scope in self.scopes:
            if scope == "*" or scope == value:
                return True
            # "acme/*" holds "acme/x" and "acme/x/y" but never "acme-corp/x": the prefix
            # ends at a segment boundary.
            if scope.endswith("/*") and value.startswith(scope[:-1]):
                return True
        return False


ANONYMOUS = Principal("anonymous", ("*",), frozenset(Role))
"""Every request's principal when authentication is off (loopback-only servers)."""


@dataclass(frozen=True, slots=True)
class _AwsCredential:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    principal: Principal


class KeyRing:
    """The configured keys. Presented keys are hashed and compared in constant time."""

    def __init__(
        self,
        digests: Sequence[tuple[bytes, Principal]],
        aws: Sequence[_AwsCredential] = (),
    ) -> None:
        self._digests = tuple(digests)
        self._aws = tuple(aws)

    def __len__(self) -> int:
        return len(self._digests) + len(self._aws)

    def __repr__(self) -> str:
        return f"KeyRing({len(self._digests)} keys, {len(self._aws)} AWS credentials)"

    def find(self, token: str) -> Principal | None:
        """The principal of an API key, or ``None``. Every digest is compared, match or not,
        so the time taken says nothing about which key (if any) was close."""
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for digest, principal in self._digests:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found

    def aws_credential(self, access_key_id: str) -> tuple[str, Principal] | None:
        """(secret access key, principal) for an AWS access key id, or ``None``."""
        found: tuple[str, Principal] | None = None
        wanted = access_key_id.encode("utf-8", "surrogateescape")
        for credential in self._aws:
            if hmac.compare_digest(wanted, credential.access_key_id.encode()):
                found = (credential.secret_access_key, credential.principal)
        return found

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read a JSON or TOML key file: ``keys = [{name, key | key_sha256, scopes, roles,
        aws_access_key_id?, aws_secret_access_key?}, …]``.

        Raises:
            ValueError: unreadable file or a malformed entry (the message never holds a key).
        """
        return cls.from_document(read_document(path), where=str(path))

    @classmethod
    def from_json(cls, text: str, *, where: str) -> KeyRing:
        """The same document as :meth:`load`, given as JSON text (an environment variable)."""
        try:
            doc = json.loads(text)
        except ValueError:
            raise ValueError(f"{where} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{where} must hold a JSON object with a 'keys' list")
        return cls.from_document(doc, where=where)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], *, where: str) -> KeyRing:
        entries = doc.get("keys")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{where}: expected a non-empty 'keys' list")
        digests: list[tuple[bytes, Principal]] = []
        aws: list[_AwsCredential] = []
        names: set[str] = set()
        for index, entry in enumerate(entries):
            spot = f"{where}: keys[{index}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{spot} must be a table")
            unknown = set(entry) - _FIELDS
            if unknown:
                raise ValueError(f"{spot}: unknown field(s) {sorted(unknown)}")
            principal = _principal(entry, spot, default_name=f"key-{index}")
            if principal.name in names:
                raise ValueError(f"{spot}: name {principal.name!r} is used twice")
            names.add(principal.name)
            digest = _digest(entry, spot)
            credential = _aws(entry, spot, principal)
            if digest is None and credential is None:
                raise ValueError(f"{spot}: give key, key_sha256 or an AWS access key pair")
            if digest is not None:
                digests.append((digest, principal))
            if credential is not None:
                aws.append(credential)
        return cls(digests, aws)


def _principal(entry: Mapping[str, Any], spot: str, *, default_name: str) -> Principal:
    name = entry.get("name", default_name)
    if not isinstance(name, str) or not name.isprintable() or not 0 < len(name) <= 64:
        raise ValueError(f"{spot}: name must be 1-64 printable characters")
    scopes = entry.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise ValueError(f"{spot} ({name}): scopes must be a non-empty list such as ['acme/*']")
    for scope in scopes:
        _check_scope(scope, f"{spot} ({name})")
    roles = entry.get("roles", [Role.INVOKE.value])
    known = {role.value for role in Role}
    if not isinstance(roles, list) or not roles or not set(roles) <= known:
        raise ValueError(f"{spot} ({name}): roles must be a non-empty list from {sorted(known)}")
    return Principal(name, tuple(scopes), frozenset(Role(role) for role in roles))


def _check_scope(scope: str, spot: str) -> None:
    if scope == "*":
        return
    prefix = scope.removesuffix("/*")
    try:
        ModelId.parse(prefix)
    except InvalidModelId:
        raise ValueError(
            f"{spot}: scope {scope[:80]!r} must be '*', '<prefix>/*' or a model id"
        ) from None


def _digest(entry: Mapping[str, Any], spot: str) -> bytes | None:
    key, hashed = entry.get("key"), entry.get("key_sha256")
    if key is not None and hashed is not None:
        raise ValueError(f"{spot}: give key or key_sha256, not both")
    if key is not None:
        if not isinstance(key, str) or len(key) < MIN_KEY_CHARS:
            raise ValueError(f"{spot}: key must be a string of at least {MIN_KEY_CHARS} characters")
        return hashlib.sha256(key.encode()).digest()
    if hashed is not None:
        if not isinstance(hashed, str) or not _HEX_DIGEST.fullmatch(hashed.lower()):
            raise ValueError(f"{spot}: key_sha256 must be 64 hexadecimal digits")
        return bytes.fromhex(hashed)
    return None


def _aws(entry: Mapping[str, Any], spot: str, principal: Principal) -> _AwsCredential | None:
    key_id, secret = entry.get("aws_access_key_id"), entry.get("aws_secret_access_key")
    if key_id is None and secret is None:
        return None
    if not isinstance(key_id, str) or not key_id.isalnum() or not isinstance(secret, str):
        raise ValueError(
            f"{spot}: aws_access_key_id (letters and digits) and aws_secret_access_key go together"
        )
    if len(secret) < MIN_KEY_CHARS:
        raise ValueError(f"{spot}: aws_secret_access_key must hold {MIN_KEY_CHARS}+ characters")
    return _AwsCredential(key_id, secret, principal)

"""Who may call what: the `x-internal-auth` check, as a middleware factory.

Three kinds of key: the admin secret (`LLM_METRICS_SECRET`, every route), ingest keys (may
only post events) and read keys (may only read). Any key may be configured as
`sha256:<hex>` of the real key, so the configuration need not hold a secret. The given key is
hashed once and compared, in constant time, with every configured digest.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from typing import Iterable, NamedTuple

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service.config import DEFAULT_SECRET, HASHED_KEY_PREFIX, Config
from service import keys
from service.errors import json_error

HEADER = "x-internal-auth"
PUBLIC_PATHS = frozenset({"/health", "/dashboard", "/openapi.json", "/docs"})
METRICS_PATH = "/metrics"


def is_public(path: str, config) -> bool:
    """Routes that need no key: PUBLIC_PATHS, and /metrics when LLM_METRICS_PROM_PUBLIC=1."""
    return path in PUBLIC_PATHS or (path == METRICS_PATH and config.prom_public)


# The routes an ingest key may POST to; every other route needs a read key (GET) or the admin key.
OTLP_PATHS = frozenset({"/v1/traces", "/api/public/otel/v1/traces", "/v1/logs", "/v1/metrics"})
INGEST_PATHS = frozenset({"/events"}) | OTLP_PATHS
READ_METHODS = frozenset({"GET", "HEAD"})


class Role(enum.Enum):
    ADMIN = "admin"
    INGEST = "ingest"
    READ = "read"


class Principal(NamedTuple):
    """Who a request comes from. `name` ("ingest key 2") is safe to log; the key never is."""

    name: str
    roles: frozenset[Role]


PRINCIPAL = web.RequestKey("principal", Principal)


def key_digest(spec: str) -> bytes:
    """The SHA-256 digest a configured key stands for (`sha256:<hex>` or the plain key)."""
    if spec[:len(HASHED_KEY_PREFIX)].lower() == HASHED_KEY_PREFIX:
        return bytes.fromhex(spec[len(HASHED_KEY_PREFIX):])
    return _sha256(spec)


def _sha256(text: str) -> bytes:
    # surrogatepass: a header aiohttp could not decode as UTF-8 still hashes instead of raising.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def is_default_secret(secret: str) -> bool:
    """True when the admin key is still `secret`, given plainly or as its hash."""
    return hmac.compare_digest(key_digest(secret), _sha256(DEFAULT_SECRET))


class KeyRing:
    """Every configured key as (digest, principal). A key listed twice gets both roles."""

    def __init__(self, admin: str, ingest: Iterable[str] = (), read: Iterable[str] = ()):
        entries = [(key_digest(admin), "admin", Role.ADMIN)]
        entries += [(key_digest(k), f"ingest key {i}", Role.INGEST) for i, k in enumerate(ingest, 1)]
        entries += [(key_digest(k), f"read key {i}", Role.READ) for i, k in enumerate(read, 1)]
        self._entries = entries

    @classmethod
    def from_config(cls, config: Config) -> "KeyRing":
        return cls(config.secret, config.ingest_keys, config.read_keys)

    def identify(self, given: str) -> Principal | None:
        """The principal `given` belongs to, or None. Checks every key: no early exit."""
        digest = _sha256(given)
        name, roles = None, set()
        for expected, entry_name, role in self._entries:
            if hmac.compare_digest(digest, expected):
                name = name or entry_name
                roles.add(role)
        return Principal(name, frozenset(roles)) if name else None


def allows(principal: Principal, method: str, path: str) -> bool:
    """May `principal` call `method path`? Admin: anything; ingest: POST to an ingest route;
    read: GET/HEAD."""
    roles = principal.roles
    return (Role.ADMIN in roles
            or (Role.INGEST in roles and method == "POST" and path in INGEST_PATHS)
            or (Role.READ in roles and method in READ_METHODS))


def basic_principal(keyring: KeyRing, authorization: str) -> Principal | None:
    """`Authorization: Basic base64(user:password)` as OTLP exporters configured for Langfuse
    send it (public key : secret key): the password, else the whole `user:password`, is the
    key. Both are checked, so the time taken does not say which matched."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        pair = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    password = pair.partition(":")[2]
    by_password = keyring.identify(password) if password else None
    by_pair = keyring.identify(pair)
    return by_password or by_pair


def auth_middleware(keyring: KeyRing):
    """401 without a known key, 403 for a known key on a route its role does not cover.

    Public routes pass untouched. Messages name the role, never the key. The OTLP routes also
    take `Authorization: Basic` (`basic_principal`) when `x-internal-auth` is absent.
    """

    @web.middleware
    async def middleware(request: web.Request, handler):
        if is_public(request.path, request.app[keys.CONFIG]):
            return await handler(request)
        given = request.headers.get(HEADER)
        if given is None and request.path in OTLP_PATHS and "authorization" in request.headers:
            principal = basic_principal(keyring, request.headers["authorization"])
            if principal is None:
                return json_error(401, "wrong Authorization header: neither the password "
                                       "(Langfuse's secret key) nor user:password is a key")
        elif given is None:
            return json_error(401, f"missing {HEADER} header")
        else:
            principal = keyring.identify(given)
        if principal is None:
            return json_error(401, f"wrong {HEADER} header: not a configured key")
        if not allows(principal, request.method, request.path):
            what = ("ingest keys may only POST to " + ", ".join(sorted(INGEST_PATHS))
                    if Role.INGEST in principal.roles else "read keys may only GET")
            return json_error(403, f"{principal.name} may not {request.method} {request.path}: "
                                   f"{what}")
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


class AccessLogger(AbstractAccessLogger):
    """The access log, without query strings: a key pasted into a URL by mistake (the API never
    asks for one there) does not end up in the log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %d %d %.1f ms', request.remote, request.method,
                         request.path, response.status, response.body_length, time * 1000)

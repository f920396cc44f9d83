"""API keys for services and users: shown once, stored as SHA-256, revocable.

Format: ``bk_live_<prefix>_<random>``; the 8-character prefix is stored in clear so a
key can be recognised in lists and logs, the whole secret only as its SHA-256.

Verified keys are cached in-process for CACHE_TTL seconds so the usage hot path costs
no key lookup per request. Consequence (documented): a revocation made by another
worker process takes effect there within CACHE_TTL seconds; in this process at once.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from billing_app.clock import utcnow
from billing_app.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from billing_app.models import ApiKey, User
from billing_app.services import users
from billing_app.services.dto import ApiKeyDTO, Principal

KEY_PREFIX = "bk_live_"
CACHE_TTL = 5.0  # seconds a verified key is trusted without a database read
LAST_USED_EVERY = timedelta(minutes=1)
# A key with no scopes may do everything its owner may; with scopes, only those.
KNOWN_SCOPES = ("usage:write", "usage:read")


@dataclass
class _Cached:
    principal: Principal
    expires: float  # time.monotonic()


_cache: dict[str, _Cached] = {}
_last_used_written: dict[int, float] = {}
_lock = threading.Lock()
# Bumped by each revocation: a lookup that read the key before a revocation committed
# does not cache what it read (it would put a revoked key back for CACHE_TTL).
_revocations = 0


def clear_cache() -> None:
    with _lock:
        _cache.clear()
        _last_used_written.clear()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _to_dto(key: ApiKey, user_email: str | None = None) -> ApiKeyDTO:
    assert key.id is not None
    return ApiKeyDTO(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        user_id=key.user_id,
        service_name=key.service_name,
        scopes=list(key.scopes or []),
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
        user_email=user_email,
    )


def create_key(
    session: Session,
    *,
    name: str,
    user_id: int | None = None,
    service_name: str | None = None,
    scopes: list[str] | None = None,
) -> tuple[ApiKeyDTO, str]:
    """Create a key for a user or a service; returns (key, secret). The secret is shown once."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ValidationFailed("Enter a key name (1 to 200 characters).", field="name")
    if user_id is None and service_name is None:
        raise ValidationFailed("Choose the user or name the service the key is for.")
    if user_id is not None and service_name is not None:
        raise ValidationFailed("A key belongs to either a user or a service, not both.")
    if service_name is not None and (not service_name.strip() or len(service_name) > 200):
        raise ValidationFailed("Service name must be 1 to 200 characters.", field="service_name")
    scopes = list(scopes or [])
    bad = [s for s in scopes if s not in KNOWN_SCOPES]
    if bad:
        raise ValidationFailed(
            f"Unknown scope {bad[0]!r}; expected some of: {', '.join(KNOWN_SCOPES)}.",
            field="scopes",
        )
    owner = users.get_user(session, user_id) if user_id is not None else None
    prefix = secrets.token_hex(4)
    secret = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        user_id=user_id,
        service_name=service_name.strip() if service_name else None,
        name=name.strip(),
        prefix=prefix,
        secret_hash=hash_secret(secret),
        scopes=scopes,
    )
    session.add(key)
    session.commit()
    return _to_dto(key, owner.email if owner is not None else None), secret


def list_keys(session: Session, user_id: int | None = None) -> list[ApiKeyDTO]:
    """Every key (newest first), or only one user's keys."""
    q = (
        select(ApiKey, User.email)
        .join(User, col(User.id) == ApiKey.user_id, isouter=True)
        .order_by(col(ApiKey.created_at).desc(), col(ApiKey.id).desc())
    )
    if user_id is not None:
        q = q.where(ApiKey.user_id == user_id)
    rows = session.exec(q).all()
    session.rollback()
    return [_to_dto(k, email) for k, email in rows]


def _owner_email(session: Session, key: ApiKey) -> str | None:
    if key.user_id is None:
        return None
    owner = session.get(User, key.user_id)
    return owner.email if owner is not None else None


def get_key(session: Session, key_id: int) -> ApiKeyDTO:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"No API key with id {key_id}.", key_id=key_id)
    return _to_dto(key, _owner_email(session, key))


def revoke_key(session: Session, key_id: int) -> ApiKeyDTO:
    """Revoke a key (idempotent). This process forgets it at once; others within CACHE_TTL."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"No API key with id {key_id}.", key_id=key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        session.commit()
    global _revocations
    with _lock:
        _revocations += 1
        for h in [h for h, c in _cache.items() if c.principal.api_key_id == key_id]:
            del _cache[h]
    return _to_dto(key, _owner_email(session, key))


def check_scope(p: Principal, scope: str | None) -> None:
    """The scope rule for one request: Forbidden unless `p` may call an endpoint that
    needs `scope`. `scope=None` is an endpoint outside every scope (billing, admin,
    account): a scoped key is refused there, so a `usage:read` key can never mint an
    unscoped key or change a quota. Sessions and unscoped keys are never restricted."""
    if p.via != "api_key" or not p.scopes:
        return
    if scope is None:
        names = ", ".join(p.scopes)
        raise Forbidden(
            f"This API key is limited to scopes {names}; this endpoint needs an "
            "unrestricted key or a signed-in session.",
            scopes=list(p.scopes),
        )
    if scope not in p.scopes:
        raise Forbidden(f"This API key lacks the {scope!r} scope.", scope=scope)


def _lookup(session: Session, digest: str) -> Principal | None:
    row = session.exec(
        select(ApiKey, User)
        .join(User, col(User.id) == ApiKey.user_id, isouter=True)
        .where(ApiKey.secret_hash == digest, col(ApiKey.revoked_at).is_(None))
    ).first()
    if row is None:
        return None
    key, user = row
    if key.user_id is not None:
        if user is None:
            return None
        return Principal(
            kind="user",
            user=users.to_dto(user),
            api_key_id=key.id,
            via="api_key",
            scopes=tuple(key.scopes or ()),
        )
    return Principal(
        kind="service",
        api_key_id=key.id,
        service_name=key.service_name,
        via="api_key",
        scopes=tuple(key.scopes or ()),
    )


def _touch(session: Session, key_id: int) -> None:
    """Write last_used_at at most once a minute per key (and per process)."""
    now_mono = time.monotonic()
    with _lock:
        last = _last_used_written.get(key_id)
        if last is not None and now_mono - last < LAST_USED_EVERY.total_seconds():
            return
        _last_used_written[key_id] = now_mono
    now = utcnow()
    session.exec(
        sa.update(ApiKey)  # type: ignore[call-overload]
        .where(
            col(ApiKey.id) == key_id,
            sa.or_(
                col(ApiKey.last_used_at).is_(None),
                col(ApiKey.last_used_at) < now - LAST_USED_EVERY,
            ),
        )
        .values(last_used_at=now)
    )
    session.commit()


def cached_principal(secret: str) -> Principal | None:
    """The principal for a recently verified secret, when no database work is due
    (cache fresh, last_used_at written less than a minute ago); else None."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    cached = _cache.get(hash_secret(secret))
    if cached is None or cached.expires <= time.monotonic():
        return None
    key_id = cached.principal.api_key_id
    last = _last_used_written.get(key_id) if key_id is not None else None
    if last is None or time.monotonic() - last >= LAST_USED_EVERY.total_seconds():
        return None
    return cached.principal


def authenticate(session: Session, secret: str | None) -> Principal:
    """The principal for a bearer secret, or Unauthorized (unknown, malformed or revoked)."""
    if not secret or not isinstance(secret, str) or not secret.startswith(KEY_PREFIX):
        raise Unauthorized("Invalid API key.")
    if len(secret) > 200:
        raise Unauthorized("Invalid API key.")
    digest = hash_secret(secret)
    now_mono = time.monotonic()
    cached = _cache.get(digest)
    if cached is not None and cached.expires > now_mono:
        principal = cached.principal
    else:
        seen = _revocations
        principal = _lookup(session, digest)
        session.rollback()
        if principal is None:
            with _lock:
                _cache.pop(digest, None)
            raise Unauthorized("Invalid API key.")
        with _lock:
            if len(_cache) > 10_000:  # bound memory against many distinct keys
                _cache.clear()
            if _revocations == seen:
                _cache[digest] = _Cached(principal, now_mono + CACHE_TTL)
    assert principal.api_key_id is not None
    _touch(session, principal.api_key_id)
    return principal

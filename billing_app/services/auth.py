"""Local accounts and browser sessions: signup, login (both rate limited), logout, OIDC matching.

Sessions are opaque random tokens; only their SHA-256 is stored, so a database leak
does not leak live sessions. The token travels in an HttpOnly cookie (session_cookie_name()).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from billing_app.clock import utcnow
from billing_app.errors import RateLimited, Unauthorized, ValidationFailed
from billing_app.models import AuthSession, User
from billing_app.models.tables import LoginAttempt, SignupAttempt
from billing_app.services import api_keys, passwords, users
from billing_app.services.dto import UserDTO
from billing_app.settings import get_settings

DEFAULT_NEXT = "/billing"


def safe_next(value: Any, default: str = DEFAULT_NEXT) -> str:
    """Only same-site relative paths ("/billing") may follow a sign-in: no open redirect."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(c) < 32 for c in value) or len(value) > 2000:
        return default
    return value


SESSION_COOKIE = "billing_session"
# Its name when the app is served over HTTPS: a browser accepts a `__Host-` cookie only
# from this very host (Secure, Path=/, no Domain), so another host of the site (a
# sibling subdomain) cannot set one that the browser would send here.
HOST_SESSION_COOKIE = "__Host-" + SESSION_COOKIE


def session_cookie_name() -> str:
    """The session cookie's name for this deployment (see HOST_SESSION_COOKIE)."""
    return HOST_SESSION_COOKIE if get_settings().app_url.startswith("https://") else SESSION_COOKIE


SESSION_TTL = timedelta(days=14)
# last_seen_at is written at most this often, so reading a session stays a pure read.
SEEN_EVERY = timedelta(minutes=5)

# Login rate limits: failed attempts inside the window, per account and per client IP.
RATE_WINDOW = timedelta(minutes=15)
MAX_FAILS_PER_ACCOUNT = 5
MAX_FAILS_PER_IP = 20

# Sign-up limit: accounts tried per client IP inside the window, however they end. Each
# costs a full password hash and makes a user row; an office behind one NAT address
# signing up its people one by one stays well below it.
SIGNUP_WINDOW = timedelta(minutes=10)
MAX_SIGNUPS_PER_IP = 10
SIGNUP_LIMITED = "Too many accounts were created from your network. Try again in a few minutes."


def limit_key(ip: str | None) -> str | None:
    """The address the per-IP limits count: an IPv6 client by its /64 ("2001:db8:1:2::/64"),
    since every home and cloud host is given a whole /64 to pick addresses from; an IPv4
    client, or an IPv4-mapped IPv6 one, by its IPv4 address. Anything else (a unix socket's
    name) as it is, cut to the column's 64 characters."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        # Built from the integer: a zone ("fe80::1%eth0") is not part of the network.
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


LOGIN_FAILED = "Email or password is incorrect."
# Verified against when the account does not exist, so timing does not reveal accounts.
_DUMMY_HASH = passwords.hash_password("not-a-real-password-ever")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session(
    session: Session, user_id: int, *, ip: str | None = None, user_agent: str | None = None
) -> str:
    """Open a session for a user; returns the token (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        AuthSession(
            user_id=user_id,
            token_hash=hash_token(token),
            created_at=now,
            expires_at=now + SESSION_TTL,
            last_seen_at=now,
            ip=(ip or None) and ip[:64],
            user_agent=(user_agent or None) and user_agent[:500],
        )
    )
    session.commit()
    return token


def signup(
    session: Session,
    email: str,
    password: str,
    display_name: str = "",
    *,
    ip: str | None = None,
) -> UserDTO:
    """Create a local account on the free plan (409 if the email is taken).

    With the client's `ip` (the API's sign-ups), RateLimited (429) past MAX_SIGNUPS_PER_IP
    from its limit_key within SIGNUP_WINDOW, before any password is hashed. Without one (the CLI, an
    operator) there is no limit."""
    email = users.normalize_email(email)
    if not isinstance(display_name, str):
        raise ValidationFailed("Display name must be a string.", field="display_name")
    key = limit_key(ip)
    if key:
        _claim_signup(session, key)
    password_hash = passwords.hash_password(password)
    # Anyone can type any address here: ADMIN_EMAILS does not apply (SSO, the CLI).
    return users.create_user(
        session, email, display_name, password_hash=password_hash, email_verified=False
    )


def _claim_signup(session: Session, ip: str) -> None:
    """Record this sign-up for `ip`, committed, then count: RateLimited (the attempt
    taken back) when it is one too many. Recorded first, as sign-in attempts are
    (_claim_attempt), so sign-ups sent at once cannot all pass a count of none."""
    attempt = SignupAttempt(ip=ip)
    session.add(attempt)
    cutoff = utcnow() - SIGNUP_WINDOW
    # Keep the table small: this address's sign-ups older than the window are spent.
    session.exec(
        sa.delete(SignupAttempt).where(  # type: ignore[call-overload]
            col(SignupAttempt.ip) == ip, col(SignupAttempt.created_at) <= cutoff
        )
    )
    session.commit()
    count = session.exec(
        select(sa.func.count())
        .select_from(SignupAttempt)
        .where(SignupAttempt.ip == ip, col(SignupAttempt.created_at) > cutoff)
    ).one()
    if count > MAX_SIGNUPS_PER_IP:
        # Refused sign-ups are not counted: trying on does not stretch the wait.
        session.exec(sa.delete(SignupAttempt).where(col(SignupAttempt.id) == attempt.id))  # type: ignore[call-overload]
        session.commit()
        raise RateLimited(SIGNUP_LIMITED, retry_after=int(SIGNUP_WINDOW.total_seconds()))
    session.rollback()  # end the read: no transaction is open during the password hash


def _recent_failures(session: Session, email: str, ip: str | None) -> tuple[int, int]:
    since = utcnow() - RATE_WINDOW
    by_account = session.exec(
        select(sa.func.count())
        .select_from(LoginAttempt)
        .where(LoginAttempt.email == email, col(LoginAttempt.created_at) > since)
    ).one()
    by_ip = 0
    if ip:
        by_ip = session.exec(
            select(sa.func.count())
            .select_from(LoginAttempt)
            .where(LoginAttempt.ip == ip, col(LoginAttempt.created_at) > since)
        ).one()
    return by_account, by_ip


def _claim_attempt(session: Session, email: str, ip: str | None) -> int:
    """Record this attempt, committed, then count: RateLimited (the attempt taken back)
    when it is one too many for the account or the IP; else its row's id.

    Recorded before the password is checked, not after: each attempt then counts every
    attempt committed before it, so at most MAX_FAILS_PER_ACCOUNT of any number sent at
    once get a password check. Counting first let 20 parallel attempts all through on
    PostgreSQL (none saw the others' uncommitted rows). And nothing stays locked during
    the check: on SQLite the count's write transaction held every writer for 100+ ms."""
    attempt = LoginAttempt(email=email, ip=ip)
    session.add(attempt)
    # Keep the table small: this account's attempts older than the window are spent.
    session.exec(
        sa.delete(LoginAttempt).where(  # type: ignore[call-overload]
            col(LoginAttempt.email) == email,
            col(LoginAttempt.created_at) <= utcnow() - RATE_WINDOW,
        )
    )
    session.commit()
    assert attempt.id is not None
    by_account, by_ip = _recent_failures(session, email, ip)
    if by_account > MAX_FAILS_PER_ACCOUNT or by_ip > MAX_FAILS_PER_IP:
        # Refused attempts are not counted: the lock-out ends a window after the failures.
        session.exec(sa.delete(LoginAttempt).where(col(LoginAttempt.id) == attempt.id))  # type: ignore[call-overload]
        session.commit()
        raise RateLimited(
            "Too many failed sign-in attempts. Try again in a few minutes.",
            retry_after=int(RATE_WINDOW.total_seconds()),
        )
    session.rollback()  # end the read: no transaction is open during the password check
    return attempt.id


def login(
    session: Session,
    email: str,
    password: str,
    ip: str | None,
    user_agent: str | None = None,
) -> tuple[UserDTO, str]:
    """Check the password and open a session: (user, token).

    Raises Unauthorized with one generic message whatever was wrong, and RateLimited
    (429) after too many failures for this account or this IP's limit_key within
    RATE_WINDOW.
    """
    if not isinstance(email, str) or not isinstance(password, str):
        raise Unauthorized(LOGIN_FAILED)
    email = email.strip().lower()[:320]
    key = limit_key(ip)
    ip = (ip or None) and ip[:64]  # the session keeps the exact address
    _claim_attempt(session, email, key)
    user = session.exec(select(User).where(User.email == email)).first()
    stored = user.password_hash if user is not None else None
    dto = users.to_dto(user) if user is not None and user.id is not None else None
    session.rollback()
    # A hash is checked whoever asks (an unknown email, an SSO-only account without a
    # password): the answer's timing must not tell which accounts exist.
    ok = passwords.verify_password(stored or _DUMMY_HASH, password[:1024]) and bool(stored)
    if not ok or dto is None:
        raise Unauthorized(LOGIN_FAILED)  # the attempt stays recorded: a failure
    # A success clears this account's failures (the per-IP count keeps running).
    session.exec(sa.delete(LoginAttempt).where(col(LoginAttempt.email) == email))  # type: ignore[call-overload]
    return dto, new_session(session, dto.id, ip=ip, user_agent=user_agent)


def user_for_token(session: Session, token: str | None) -> UserDTO | None:
    """The signed-in user for a session token, or None (unknown, expired or revoked)."""
    if not token or not isinstance(token, str) or len(token) > 256:
        return None
    now = utcnow()
    row = session.exec(
        select(AuthSession, User)
        .join(User, col(User.id) == AuthSession.user_id)
        .where(
            AuthSession.token_hash == hash_token(token),
            col(AuthSession.revoked_at).is_(None),
            col(AuthSession.expires_at) > now,
        )
    ).first()
    if row is None:
        session.rollback()
        return None
    auth, user = row
    # Read before the transaction ends: the row is expired after it, and reading it then
    # would begin another, which on SQLite (BEGIN IMMEDIATE) holds the write lock until
    # the caller's session ends (a streamed download's whole length).
    dto = users.to_dto(user)
    if auth.last_seen_at is None or auth.last_seen_at < now - SEEN_EVERY:
        auth.last_seen_at = now
        session.add(auth)
        session.commit()
    else:
        session.rollback()
    return dto


def logout(session: Session, cookie_header: str | None) -> None:
    """Revoke every session the header's cookies carry (unknown tokens are no-ops): with
    two, revoking one left the other, which the pages or the API could still be using."""
    tokens = session_tokens(cookie_header)
    if not tokens:
        return
    session.exec(
        sa.update(AuthSession)  # type: ignore[call-overload]
        .where(
            col(AuthSession.token_hash).in_([hash_token(t) for t in tokens]),
            col(AuthSession.revoked_at).is_(None),
        )
        .values(revoked_at=utcnow())
    )
    session.commit()


def set_password(session: Session, user_id: int, password: str) -> UserDTO:
    """An operator's reset of a user's local password. Every open session of the user is
    signed out (whoever held one no longer does) and the account's failed attempts are
    forgotten, so its owner can sign in with the new password at once."""
    password_hash = passwords.hash_password(password)
    user = users.get_user(session, user_id)
    user.password_hash = password_hash
    session.add(user)
    session.exec(
        sa.update(AuthSession)  # type: ignore[call-overload]
        .where(col(AuthSession.user_id) == user_id, col(AuthSession.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    session.exec(sa.delete(LoginAttempt).where(col(LoginAttempt.email) == user.email))  # type: ignore[call-overload]
    session.commit()
    return users.to_dto(user)


# The most session cookies of one request looked up (a browser sends a few at most).
MAX_SESSION_COOKIES = 4


def session_tokens(cookie_header: str | None) -> list[str]:
    """Every session token in a raw `Cookie:` header, in the order sent.

    A browser sends two when another host of the site set one for the parent domain,
    or an old one with another path is left over: the API and the pages must pick the
    same one (see user_for_cookie). Parsed by hand: SimpleCookie gives up on the whole
    header at the first cookie it dislikes, and other apps on the same host may set such
    cookies."""
    if not cookie_header or not isinstance(cookie_header, str):
        return []
    tokens: list[str] = []
    wanted = session_cookie_name()
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name.strip() == wanted:
            value = value.strip().strip('"')
            if value and value not in tokens:
                tokens.append(value)
    return tokens[:MAX_SESSION_COOKIES]


def user_for_cookie(session: Session, cookie_header: str | None) -> UserDTO | None:
    """The user of the first session cookie in the header that is a live session: the
    one rule of the API and the pages, so both act for the same user."""
    for token in session_tokens(cookie_header):
        user = user_for_token(session, token)
        if user is not None:
            return user
    return None


def oidc_user(
    session: Session,
    *,
    subject: str,
    email: str | None,
    email_verified: bool,
    name: str = "",
) -> UserDTO:
    """The local user for an OIDC identity: by subject, else by verified email, else new.

    An unverified email is never used to match (or create) an account: that would let
    anyone who controls an IdP account claim someone else's address. Nor is a verified
    one to match an account already linked to another subject.
    """
    if not subject:
        raise Unauthorized("The identity provider did not return a subject.")
    user = session.exec(select(User).where(User.oidc_subject == subject)).first()
    if user is not None:
        return users.to_dto(user)
    if not email or not email_verified:
        raise Unauthorized(
            "Your identity provider did not confirm a verified email address.",
            field="email_verified",
        )
    email = users.normalize_email(email)
    user = session.exec(select(User).where(User.email == email)).first()
    if user is not None:
        if user.oidc_subject is not None:
            # Linked to another identity already: only the subject is stable (OIDC Core
            # 5.7); an address the provider later verifies for someone else (reassigned,
            # renamed) must not move the account to them.
            raise Unauthorized(
                "This email's account signs in with another identity at your provider.",
                field="oidc_subject",
            )
        if user.password_hash is not None:
            # A password signup never proved this email: whoever made it may not be the
            # verified owner signing in now. The owner takes the account; the password,
            # its sessions and its API keys (which that signup may hold) stop working.
            _revoke_access(session, user)
        user.oidc_subject = subject
        session.add(user)
        session.commit()
        return users.to_dto(user)
    return users.create_user(session, email, (name or "")[:200], oidc_subject=subject)


def _revoke_access(session: Session, user: User) -> None:
    """Revoke the account's API keys (each committed) and sessions, and drop its
    password. Caller commits the rest."""
    user_id = user.id
    assert user_id is not None
    for key in api_keys.list_keys(session, user_id=user_id):
        if key.revoked_at is None:
            api_keys.revoke_key(session, key.id)
    session.exec(
        sa.update(AuthSession)  # type: ignore[call-overload]
        .where(col(AuthSession.user_id) == user_id, col(AuthSession.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    user.password_hash = None

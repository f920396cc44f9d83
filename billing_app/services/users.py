"""Accounts: creation (with the free plan's quotas), lookup, roles."""

from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from billing_app.errors import Conflict, UserNotFound, ValidationFailed
from billing_app.models import User
from billing_app.services import quotas
from billing_app.services.dto import UserDTO
from billing_app.settings import get_settings

# No spaces or control characters (a NUL is stored by SQLite and refused by PostgreSQL).
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")


def normalize_email(email: str) -> str:
    if not isinstance(email, str):
        raise ValidationFailed("Email must be a string.", field="email")
    email = email.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise ValidationFailed(f"{email!r} is not a valid email address.", field="email")
    return email


def to_dto(user: User) -> UserDTO:
    assert user.id is not None
    return UserDTO(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        role=user.role,
        created_at=user.created_at,
        stripe_customer_id=user.stripe_customer_id,
    )


def create_user(
    session: Session,
    email: str,
    display_name: str = "",
    *,
    admin: bool = False,
    password_hash: str | None = None,
    oidc_subject: str | None = None,
    email_verified: bool = True,
) -> UserDTO:
    """Create a user on the free plan. ADMIN_EMAILS makes the user an admin, when the
    email is known to be theirs (`email_verified`: an identity provider's verified email,
    an operator's command); a password signup proves nothing of the sort."""
    email = normalize_email(email)
    if len(display_name) > 200:
        raise ValidationFailed("Display name is longer than 200 characters.", field="display_name")
    listed = email_verified and email in get_settings().admin_email_set
    role = "admin" if admin or listed else "user"
    user = User(
        email=email,
        display_name=display_name.strip() or email.split("@")[0],
        role=role,
        password_hash=password_hash,
        oidc_subject=oidc_subject,
    )
    session.add(user)
    try:
        session.flush()
        assert user.id is not None
        quotas.apply_plan(session, user.id, "free")
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"A user with email {email} already exists.", field="email") from None
    return to_dto(user)


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound.of(user_id)
    return user


def existing_ids(session: Session, ids: set[int]) -> set[int]:
    """Which of `ids` are users (one query)."""
    if not ids:
        return set()
    return set(session.exec(select(User.id).where(col(User.id).in_(ids))).all())  # type: ignore[arg-type]


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.exec(select(User).where(User.email == normalize_email(email))).first()


def set_role(session: Session, user_id: int, role: str) -> UserDTO:
    if role not in ("user", "admin"):
        raise ValidationFailed("Role must be 'user' or 'admin'.", field="role")
    user = get_user(session, user_id)
    user.role = role
    session.add(user)
    session.commit()
    return to_dto(user)

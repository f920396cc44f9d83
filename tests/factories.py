"""Test factories: build real rows through the services."""

from __future__ import annotations

import itertools

from sqlmodel import Session

from billing_app.services import quotas, users
from billing_app.services.dto import UserDTO

_seq = itertools.count(1)


def make_user(
    session: Session, *, email: str | None = None, plan: str = "free", admin: bool = False
) -> UserDTO:
    user = users.create_user(session, email or f"user{next(_seq)}@example.com", admin=admin)
    if plan != "free":
        quotas.apply_plan(session, user.id, plan)
        session.commit()
    return user

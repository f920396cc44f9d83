"""signup_attempt: sign-ups per client IP, for the sign-up rate limit

Each sign-up costs a full password hash and makes a user row: anyone could send them
without end. Counted per IP in the database, as failed sign-ins are (login_attempt), so
every worker sees the same count.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-12 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

import billing_app.models.types
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signup_attempt",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ip", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column(
            "created_at", billing_app.models.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_signup_attempt_ip_created", "signup_attempt", ["ip", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_signup_attempt_ip_created", table_name="signup_attempt")
    op.drop_table("signup_attempt")

"""quota: a partial index on the admin overrides' users

The users list's "Quota override" filter (`usage=override`) asks which users have a quota
row an admin set; without an index that scanned all of `quota` (three rows per user). The
overrides are few, so the index holds only them (bench/README.md finding 50).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADMIN = sa.text("source = 'admin'")


def upgrade() -> None:
    op.create_index(
        "ix_quota_admin_user_id",
        "quota",
        ["user_id"],
        postgresql_where=ADMIN,
        sqlite_where=ADMIN,
    )


def downgrade() -> None:
    op.drop_index("ix_quota_admin_user_id", table_name="quota")

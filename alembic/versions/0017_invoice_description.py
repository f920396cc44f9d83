"""invoice.description: what an invoice bills for, from its lines

The invoice lists said nothing of what a row was ("Pro plan (prorated)", "Basic plan"):
a subscription invoice's own `description` is empty, its lines name the prices. Older rows
read NULL (no words shown) until their next event or `stripe sync`.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-11 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("invoice", sa.Column("description", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.drop_column("description")

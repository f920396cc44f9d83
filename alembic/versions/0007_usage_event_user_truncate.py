"""usage_event is emptied with "user" by TRUNCATE ... CASCADE (PostgreSQL)

Migration 0006 replaced the events' foreign key with a trigger on DELETE. TRUNCATE
fires no DELETE trigger, and CASCADE follows foreign keys only, so `TRUNCATE "user"
CASCADE` (an operator's reset) would have left every event behind; with RESTART
IDENTITY, new users would then have inherited the old users' events and idempotency
keys. This trigger truncates the events too, as the key's cascade did. SQLite has no
TRUNCATE: its `DELETE FROM "user"` fires 0006's row trigger.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 04:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION truncate_usage_events() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Already emptied when the same TRUNCATE named it (truncating it again
            -- from here would be refused: the statement is still using it).
            IF EXISTS (SELECT 1 FROM usage_event) THEN
                TRUNCATE usage_event;
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER user_truncated_usage_events AFTER TRUNCATE ON "user"
        FOR EACH STATEMENT EXECUTE FUNCTION truncate_usage_events()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute('DROP TRIGGER user_truncated_usage_events ON "user"')
    op.execute("DROP FUNCTION truncate_usage_events()")

"""Initial schema: users, rides, ride_passengers.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out rather than generated, and kept to what Cairn runs: a lone Integer primary
key becomes SERIAL; no sequences, identity columns, enums or views. See rides/models.py
for why there are no foreign keys to users.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(254), nullable=True),
    )
    op.create_table(
        "rides",
        sa.Column("id", sa.Integer, primary_key=True),  # SERIAL
        sa.Column("driver", sa.String(64), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("destination", sa.String(200), nullable=False),
        sa.Column("departure", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seats", sa.Integer, nullable=False),
        sa.Column("seats_taken", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.CheckConstraint("seats > 0", name="ck_rides_seats_positive"),
        sa.CheckConstraint("seats_taken >= 0 AND seats_taken <= seats", name="ck_rides_seats_taken"),
    )
    op.create_index("ix_rides_route_departure", "rides", ["source", "destination", "departure"])
    op.create_index("ix_rides_driver", "rides", ["driver"])
    op.create_table(
        "ride_passengers",
        sa.Column(
            "ride_id",
            sa.Integer,
            sa.ForeignKey("rides.id", name="fk_ride_passengers_ride_id"),
            primary_key=True,
        ),
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ride_passengers_username", "ride_passengers", ["username"])


def downgrade() -> None:
    op.drop_table("ride_passengers")  # its index goes with it
    op.drop_table("rides")
    op.drop_table("users")

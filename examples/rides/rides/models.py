"""The schema, as SQLAlchemy ORM classes (alembic/versions/0001_initial.py creates it).

Cairn hash-distributes a table on the first column of its primary key and allows a
foreign key only between co-located tables (distribution column to distribution
column). So: users are spread by username, rides by id, and ride_passengers is keyed
(ride_id, username) with a foreign key to rides(id), which keeps a ride's passengers on
the ride's shard. There is deliberately NO foreign key from rides.driver or
ride_passengers.username to users(username): those would cross shards. The API checks
that the user exists inside the same transaction instead (see api.py).
"""

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

USERNAME_LEN = 64
NAME_LEN = 200
EMAIL_LEN = 254
PLACE_LEN = 200


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(USERNAME_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    email: Mapped[str | None] = mapped_column(String(EMAIL_LEN))


class Ride(Base):
    __tablename__ = "rides"
    __table_args__ = (
        CheckConstraint("seats > 0", name="ck_rides_seats_positive"),
        # The last line of defence against overbooking; the join's UPDATE never gets here.
        CheckConstraint("seats_taken >= 0 AND seats_taken <= seats", name="ck_rides_seats_taken"),
        Index("ix_rides_route_departure", "source", "destination", "departure"),
        Index("ix_rides_driver", "driver"),
    )

    # A lone Integer primary key is SERIAL on PostgreSQL, which Cairn supports (it has no
    # stand-alone sequences or identity columns).
    id: Mapped[int] = mapped_column(primary_key=True)
    driver: Mapped[str] = mapped_column(String(USERNAME_LEN))  # a users.username; no FK, see above
    source: Mapped[str] = mapped_column(String(PLACE_LEN))
    destination: Mapped[str] = mapped_column(String(PLACE_LEN))
    departure: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seats: Mapped[int]
    seats_taken: Mapped[int] = mapped_column(default=0, server_default=text("0"))

    passengers: Mapped[list["RidePassenger"]] = relationship(
        order_by=lambda: [RidePassenger.joined_at, RidePassenger.username]
    )


class RidePassenger(Base):
    __tablename__ = "ride_passengers"
    __table_args__ = (Index("ix_ride_passengers_username", "username"),)

    # First primary-key column = distribution column, and it references rides' own: co-located.
    ride_id: Mapped[int] = mapped_column(
        ForeignKey("rides.id", name="fk_ride_passengers_ride_id"), primary_key=True
    )
    username: Mapped[str] = mapped_column(String(USERNAME_LEN), primary_key=True)  # no FK, see above
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

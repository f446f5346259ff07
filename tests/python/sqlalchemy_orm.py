"""SQLAlchemy 2 (psycopg 3) against a Cairn cluster, unchanged: the dialect's first
queries, create_all, inspect(), the ORM with a relationship and a join, transactions, and
a unique violation. Run by tests/orm.rs with the cluster's URL; exits non-zero on failure."""

import sys
from decimal import Decimal

from sqlalchemy import ForeignKey, Numeric, String, create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Rider(Base):
    __tablename__ = "riders"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30), unique=True)
    rides: Mapped[list["Ride"]] = relationship(back_populates="rider")


class Ride(Base):
    __tablename__ = "rides"
    # Co-located with its rider: the foreign key's column is in the primary key.
    rider_id: Mapped[int] = mapped_column(ForeignKey("riders.id"), primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    fare: Mapped[Decimal] = mapped_column(Numeric(8, 2))
    rider: Mapped[Rider] = relationship(back_populates="rides")


def main(url: str) -> None:
    engine = create_engine(url)
    with engine.connect() as c:
        assert c.execute(text("select 1")).scalar() == 1
        assert engine.dialect.server_version_info[0] >= 13, engine.dialect.server_version_info

    Base.metadata.create_all(engine)
    # create_all asks whether each table exists first: a second run creates nothing.
    Base.metadata.create_all(engine)

    insp = inspect(engine)
    assert sorted(insp.get_table_names()) == ["riders", "rides"], insp.get_table_names()
    columns = {c["name"]: c for c in insp.get_columns("riders")}
    assert list(columns) == ["id", "name"], columns
    assert not columns["id"]["nullable"] and not columns["name"]["nullable"], columns
    assert str(columns["name"]["type"]) == "VARCHAR(30)", columns["name"]["type"]
    fare = {c["name"]: c for c in insp.get_columns("rides")}["fare"]
    assert str(fare["type"]) == "NUMERIC(8, 2)", fare["type"]
    fks = insp.get_foreign_keys("rides")
    assert [(f["constrained_columns"], f["referred_table"], f["referred_columns"]) for f in fks] == [
        (["rider_id"], "riders", ["id"])
    ], fks

    with Session(engine) as s:
        ann = Rider(id=1, name="ann")
        s.add_all([ann, Rider(id=2, name="bob")])
        s.add_all([Ride(id=10, rider=ann, fare=Decimal("12.50")), Ride(id=11, rider=ann, fare=Decimal("7.25"))])
        s.commit()

    with Session(engine) as s:
        rows = s.execute(
            select(Rider.name, Ride.fare).join(Ride.rider).order_by(Ride.id)
        ).all()
        assert rows == [("ann", Decimal("12.50")), ("ann", Decimal("7.25"))], rows
        ann = s.get(Rider, 1)
        assert sorted(r.id for r in ann.rides) == [10, 11]

    # A rolled-back transaction leaves nothing behind.
    with Session(engine) as s:
        s.add(Rider(id=3, name="cid"))
        s.flush()
        s.rollback()
    with Session(engine) as s:
        assert s.get(Rider, 3) is None

    # A unique violation is an IntegrityError, and the session recovers after rollback.
    with Session(engine) as s:
        s.add(Rider(id=4, name="ann"))
        try:
            s.commit()
            raise AssertionError("a duplicate name was accepted")
        except IntegrityError:
            s.rollback()
        assert s.scalar(select(Rider.name).where(Rider.id == 2)) == "bob"

    Base.metadata.drop_all(engine)
    assert inspect(engine).get_table_names() == []
    print("sqlalchemy: ok")


if __name__ == "__main__":
    main(sys.argv[1])

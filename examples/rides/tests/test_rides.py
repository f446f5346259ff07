import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from alembic import command
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from rides import db
from rides.models import Ride, RidePassenger

NOW = datetime.now(timezone.utc).replace(microsecond=0)
MISSING = object()


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def make_user(client, username, **extra):
    r = client.put("/api/v1/users", json={"username": username, "name": username.title(), **extra})
    assert r.status_code == 201, r.json
    return r.json


def make_ride(client, driver="dave", **overrides):
    body = {"driver": driver, "source": "Berlin", "destination": "Prague",
            "departure": iso(NOW + timedelta(days=1)), "seats": 3} | overrides
    r = client.post("/api/v1/rides", json=body)
    assert r.status_code == 201, r.json
    return r.json


def insert_departed_ride(app, driver: str) -> int:
    """A ride in the past: the API refuses to create one, so write it directly."""
    with Session(app.extensions["rides.engine"]) as s, s.begin():
        ride = Ride(driver=driver, source="Berlin", destination="Prague",
                    departure=NOW - timedelta(hours=1), seats=3, seats_taken=0)
        s.add(ride)
        s.flush()
        return ride.id


def assert_error(response, status, code):
    assert response.status_code == status, (response.status_code, response.json)
    assert response.json["error"]["code"] == code, response.json
    assert response.json["error"]["message"]


# --- users -----------------------------------------------------------------------------

def test_users_are_created_listed_and_deleted(client):
    assert client.get("/api/v1/users").json == {"users": []}
    assert make_user(client, "bob", email="bob@example.com") == {
        "username": "bob", "name": "Bob", "email": "bob@example.com"}
    make_user(client, "alice")
    assert [u["username"] for u in client.get("/api/v1/users").json["users"]] == ["alice", "bob"]

    assert_error(client.put("/api/v1/users", json={"username": "bob", "name": "B"}), 409, "user_exists")

    assert client.delete("/api/v1/users/bob").status_code == 204
    assert_error(client.delete("/api/v1/users/bob"), 404, "user_not_found")
    assert [u["username"] for u in client.get("/api/v1/users").json["users"]] == ["alice"]


@pytest.mark.parametrize("body", [
    None,                                           # no JSON at all
    ["bob"],                                        # not an object
    {"name": "Bob"},                                # missing username
    {"username": "bob"},                            # missing name
    {"username": 7, "name": "Bob"},                 # wrong type
    {"username": "", "name": "Bob"},
    {"username": "bob smith", "name": "Bob"},       # space in a username
    {"username": "b" * 65, "name": "Bob"},          # too long
    {"username": "bob", "name": "Bob", "email": "nope"},
    {"username": "bob", "name": "Bob", "age": 3},   # unknown field
])
def test_bad_users_are_refused(client, body):
    r = client.put("/api/v1/users", json=body) if body is not None else client.put("/api/v1/users", data="bob")
    assert_error(r, 400, "bad_request")
    assert client.get("/api/v1/users").json == {"users": []}


def test_unknown_query_parameters_routes_and_methods_are_json_errors(client):
    assert_error(client.get("/api/v1/users?sort=name"), 400, "bad_request")
    assert_error(client.get("/api/v1/nothing"), 404, "not_found")
    assert_error(client.patch("/api/v1/users"), 405, "method_not_allowed")


# --- rides -----------------------------------------------------------------------------

def test_a_ride_is_created_and_read(client):
    make_user(client, "dave")
    r = client.post("/api/v1/rides", json={"driver": "dave", "source": "Berlin", "destination": "Prague",
                                           "departure": "2099-05-01T10:30:00+02:00", "seats": 4})
    assert r.status_code == 201, r.json
    ride = r.json
    assert r.headers["Location"] == f"/api/v1/rides/{ride['id']}"
    assert ride == {"id": ride["id"], "driver": "dave", "source": "Berlin", "destination": "Prague",
                    "departure": "2099-05-01T08:30:00Z", "seats": 4, "seats_taken": 0,
                    "seats_available": 4, "passengers": []}
    assert client.get(f"/api/v1/rides/{ride['id']}").json == ride
    assert make_ride(client)["id"] != ride["id"]


@pytest.mark.parametrize("change", [
    {"seats": 0}, {"seats": -1}, {"seats": 101}, {"seats": "3"}, {"seats": True}, {"seats": 2.5},
    {"departure": "tomorrow"}, {"departure": "2099-02-30T10:00:00Z"}, {"departure": 4102444800},
    {"departure": "2099-05-01T10:00:00"},           # no time zone
    {"departure": iso(NOW - timedelta(minutes=5))},  # in the past
    {"source": ""}, {"destination": None}, {"driver": "no body"},
    {"seats": MISSING},                             # missing field
    {"luggage": 2},                                 # unknown field
])
def test_bad_rides_are_refused(client, change):
    make_user(client, "dave")
    body = {"driver": "dave", "source": "Berlin", "destination": "Prague",
            "departure": iso(NOW + timedelta(days=1)), "seats": 3} | change
    body = {k: v for k, v in body.items() if v is not MISSING}
    assert_error(client.post("/api/v1/rides", json=body), 400, "bad_request")
    assert client.get("/api/v1/rides").json == {"rides": []}


def test_unknown_driver_and_ride_are_404(client):
    r = client.post("/api/v1/rides", json={"driver": "ghost", "source": "A", "destination": "B",
                                           "departure": iso(NOW + timedelta(days=1)), "seats": 1})
    assert_error(r, 404, "user_not_found")
    assert_error(client.get("/api/v1/rides/12345"), 404, "ride_not_found")
    assert_error(client.get("/api/v1/rides/99999999999"), 404, "ride_not_found")  # beyond int4
    assert_error(client.get("/api/v1/rides/abc"), 400, "bad_request")
    assert_error(client.get("/api/v1/rides/-1"), 400, "bad_request")


def test_joining_a_ride(client, app):
    for name in ("dave", "ann", "ben", "cat"):
        make_user(client, name)
    ride = make_ride(client, seats=2)
    url = f"/api/v1/rides/{ride['id']}"

    r = client.post(url, json={"username": "ann"})
    assert r.status_code == 201, r.json
    assert (r.json["passengers"], r.json["seats_taken"], r.json["seats_available"]) == (["ann"], 1, 1)

    assert_error(client.post(url, json={"username": "ann"}), 409, "already_joined")
    assert_error(client.post(url, json={"username": "dave"}), 409, "own_ride")
    assert_error(client.post(url, json={"username": "ghost"}), 404, "user_not_found")
    assert_error(client.post("/api/v1/rides/424242", json={"username": "ben"}), 404, "ride_not_found")
    assert_error(client.post(url, json={}), 400, "bad_request")
    assert_error(client.post(url, json={"username": ["ben"]}), 400, "bad_request")
    assert client.post(url, json={"username": "ben"}).status_code == 201
    assert_error(client.post(url, json={"username": "cat"}), 409, "ride_full")
    assert_error(client.post(url, json={"username": "ann"}), 409, "already_joined")  # full, but that is not why

    departed = insert_departed_ride(app, "dave")
    assert_error(client.post(f"/api/v1/rides/{departed}", json={"username": "cat"}), 409, "ride_departed")

    # Refusals changed nothing.
    got = client.get(url).json
    assert (got["passengers"], got["seats_taken"]) == (["ann", "ben"], 2)


def test_upcoming_rides_are_filtered_and_ordered_by_departure(client, app):
    make_user(client, "dave")
    late = make_ride(client, departure=iso(NOW + timedelta(days=3)))
    soon = make_ride(client, departure=iso(NOW + timedelta(hours=2)))
    make_ride(client, destination="Vienna")
    make_ride(client, source="Dresden")
    insert_departed_ride(app, "dave")

    r = client.get("/api/v1/rides?source=Berlin&destination=Prague")
    assert r.status_code == 200, r.json
    assert [x["id"] for x in r.json["rides"]] == [soon["id"], late["id"]]
    assert [x["id"] for x in client.get("/api/v1/rides?source=Berlin&destination=Prague&limit=1").json["rides"]] == [soon["id"]]
    assert len(client.get("/api/v1/rides").json["rides"]) == 4
    assert len(client.get("/api/v1/rides?source=Berlin").json["rides"]) == 3
    assert client.get("/api/v1/rides?source=Atlantis").json == {"rides": []}

    for bad in ("from=Berlin", "limit=0", "limit=ten", "source=", "source=A&source=B"):
        assert_error(client.get(f"/api/v1/rides?{bad}"), 400, "bad_request")


def test_deleting_users_frees_their_seats_and_removes_their_rides(client):
    for name in ("dave", "ann", "ben"):
        make_user(client, name)
    ride = make_ride(client, seats=2)
    own = make_ride(client, driver="ann")
    client.post(f"/api/v1/rides/{ride['id']}", json={"username": "ann"})
    client.post(f"/api/v1/rides/{own['id']}", json={"username": "ben"})

    assert client.delete("/api/v1/users/ann").status_code == 204
    got = client.get(f"/api/v1/rides/{ride['id']}").json
    assert (got["passengers"], got["seats_taken"]) == ([], 0)
    assert_error(client.get(f"/api/v1/rides/{own['id']}"), 404, "ride_not_found")
    assert [r["id"] for r in client.get("/api/v1/rides").json["rides"]] == [ride["id"]]


def test_clear_empties_every_table(client):
    make_user(client, "dave")
    make_user(client, "ann")
    client.post(f"/api/v1/rides/{make_ride(client)['id']}", json={"username": "ann"})
    assert client.post("/api/v1/db/clear").status_code == 204
    assert client.get("/api/v1/users").json == {"users": []}
    assert client.get("/api/v1/rides").json == {"rides": []}


# --- concurrency -----------------------------------------------------------------------

def test_concurrent_joins_never_overbook(client, app):
    seats, joiners = 5, 20
    make_user(client, "dave")
    for i in range(joiners):
        make_user(client, f"p{i:02}")
    ride = make_ride(client, seats=seats)
    start = threading.Barrier(joiners, timeout=10)

    def join(i):
        c = app.test_client()  # one client per thread
        start.wait()  # all at once
        r = c.post(f"/api/v1/rides/{ride['id']}", json={"username": f"p{i:02}"})
        return r.status_code, (r.json.get("error") or {}).get("code")

    with ThreadPoolExecutor(joiners) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(join, i) for i in range(joiners)]]

    assert sorted(results) == [(201, None)] * seats + [(409, "ride_full")] * (joiners - seats), results
    got = client.get(f"/api/v1/rides/{ride['id']}").json
    assert (got["seats_taken"], len(got["passengers"])) == (seats, seats)
    with Session(app.extensions["rides.engine"]) as s:
        count = s.scalar(select(func.count()).select_from(RidePassenger).where(RidePassenger.ride_id == ride["id"]))
    assert count == seats


def test_a_transaction_is_retried_on_serialization_failure(app, monkeypatch):
    monkeypatch.setattr(db.time, "sleep", lambda s: None)
    engine = app.extensions["rides.engine"]
    failure = OperationalError("UPDATE rides ...", {}, psycopg.errors.SerializationFailure("conflict"))
    assert failure.orig.sqlstate == "40001"
    calls = []

    def flaky(session):
        calls.append(1)
        if len(calls) < 3:
            raise failure
        return "done"

    assert db.transaction(engine, flaky) == "done" and len(calls) == 3

    calls.clear()
    with pytest.raises(OperationalError):  # gives up after MAX_ATTEMPTS
        db.transaction(engine, lambda s: calls.append(1) or (_ for _ in ()).throw(failure))
    assert len(calls) == db.MAX_ATTEMPTS

    calls.clear()
    unique = IntegrityError("INSERT ...", {}, psycopg.errors.UniqueViolation("dup"))
    with pytest.raises(IntegrityError):  # anything else is not retried
        db.transaction(engine, lambda s: calls.append(1) or (_ for _ in ()).throw(unique))
    assert len(calls) == 1


# --- migrations: keep this test last ---------------------------------------------------

def test_migrations_go_down_to_base_and_up_again(app, migrated):
    engine = app.extensions["rides.engine"]
    engine.dispose()  # drop pooled connections (and their prepared statements) first
    command.downgrade(migrated, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(migrated, "head")
    assert {"users", "rides", "ride_passengers"} <= set(inspect(engine).get_table_names())
    engine.dispose()
    client = app.test_client()
    make_user(client, "dave")
    assert client.get(f"/api/v1/rides/{make_ride(client)['id']}").status_code == 200

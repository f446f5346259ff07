"""The HTTP API: /api/v1/users, /api/v1/rides, /api/v1/db/clear."""

import re
from datetime import datetime, timezone

from flask import Blueprint, current_app, request, url_for
from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from . import db
from .models import EMAIL_LEN, NAME_LEN, PLACE_LEN, USERNAME_LEN, Ride, RidePassenger, User

api = Blueprint("api", __name__, url_prefix="/api/v1")

USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
MAX_SEATS = 100
MAX_INT4 = 2**31 - 1


class ApiError(Exception):
    """Answered as {"error": {"code": ..., "message": ...}} with its HTTP status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def run(work):
    return db.transaction(current_app.extensions["rides.engine"], work)


def now() -> datetime:
    return datetime.now(timezone.utc)


# --- input validation -------------------------------------------------------------------

def json_body(required: set[str], optional: set[str] = frozenset()) -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object (Content-Type: application/json)")
    if missing := sorted(required - body.keys()):
        raise bad_request(f"missing field(s): {', '.join(missing)}")
    if unknown := sorted(body.keys() - required - optional):
        raise bad_request(f"unknown field(s): {', '.join(unknown)}")
    return body


# The query parameters each endpoint takes; any other is a 400.
QUERY_PARAMETERS = {"api.upcoming_rides": {"source", "destination", "limit"}}


@api.before_request
def check_query_parameters():
    allowed = QUERY_PARAMETERS.get(request.endpoint, set())
    if unknown := sorted(request.args.keys() - allowed):
        raise bad_request(f"unknown query parameter(s): {', '.join(unknown)}")
    if repeated := sorted(k for k in request.args if len(request.args.getlist(k)) > 1):
        raise bad_request(f"query parameter(s) given more than once: {', '.join(repeated)}")


def text_field(value, field: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a string")
    value = value.strip()
    if not value or len(value) > max_len:
        raise bad_request(f"{field} must be 1 to {max_len} characters")
    return value


def username_field(value, field: str = "username") -> str:
    value = text_field(value, field, USERNAME_LEN)
    if not USERNAME_RE.fullmatch(value):
        raise bad_request(f"{field} may contain only letters, digits, '_', '.' and '-'")
    return value


def int_field(value, field: str, low: int, high: int) -> int:
    # bool is an int in Python, but true is not a number of seats.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"{field} must be an integer from {low} to {high}")
    return value


def time_field(value, field: str) -> datetime:
    if not isinstance(value, str):
        raise bad_request(f"{field} must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"{field} is not an ISO 8601 date-time: {value!r}") from None
    if parsed.tzinfo is None:
        raise bad_request(f"{field} needs a time zone, e.g. 2030-01-31T08:00:00Z")
    return parsed.astimezone(timezone.utc)


def ride_id_arg(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise bad_request(f"a ride id is a positive integer, not {raw!r}")
    ride_id = int(raw)
    if not 0 < ride_id <= MAX_INT4:  # ids are SERIAL (int4): nothing else can exist
        raise ApiError(404, "ride_not_found", f"no ride {raw}")
    return ride_id


# --- JSON output -----------------------------------------------------------------------

def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def user_json(u: User) -> dict:
    return {"username": u.username, "name": u.name, "email": u.email}


def ride_json(r: Ride, with_passengers: bool = False) -> dict:
    out = {
        "id": r.id,
        "driver": r.driver,
        "source": r.source,
        "destination": r.destination,
        "departure": iso(r.departure),
        "seats": r.seats,
        "seats_taken": r.seats_taken,
        "seats_available": r.seats - r.seats_taken,
    }
    if with_passengers:
        out["passengers"] = [p.username for p in r.passengers]
    return out


# --- users -----------------------------------------------------------------------------

def user_exists(s: Session, username: str) -> bool:
    # FOR SHARE matters on PostgreSQL only (READ COMMITTED): it holds off a concurrent
    # DELETE of this user until we commit, standing in for the foreign key we cannot have.
    # Cairn accepts and ignores it: a transaction there already holds the shard.
    found = s.execute(select(User.username).where(User.username == username).with_for_update(read=True))
    return found.first() is not None


@api.put("/users")
def create_user():
    body = json_body({"username", "name"}, {"email"})
    values = {
        "username": username_field(body["username"]),
        "name": text_field(body["name"], "name", NAME_LEN),
        "email": None,
    }
    if body.get("email") is not None:
        values["email"] = text_field(body["email"], "email", EMAIL_LEN)
        if "@" not in values["email"]:
            raise bad_request("email must contain '@'")

    def work(s: Session):
        # ON CONFLICT DO NOTHING: a duplicate is an answer (409), not an aborted transaction.
        stmt = insert(User).values(**values).on_conflict_do_nothing().returning(User.username)
        if s.execute(stmt).first() is None:
            raise ApiError(409, "user_exists", f"user {values['username']!r} already exists")

    run(work)
    return values, 201


@api.get("/users")
def list_users():
    users = run(lambda s: [user_json(u) for u in s.scalars(select(User).order_by(User.username))])
    return {"users": users}


@api.delete("/users/<username>")
def delete_user(username: str):
    def work(s: Session):
        # Without foreign keys to users, this transaction removes what refers to the user:
        # the seats they hold (freed again) and the rides they drive (with their passengers).
        if s.execute(delete(User).where(User.username == username).returning(User.username)).first() is None:
            raise ApiError(404, "user_not_found", f"no user {username!r}")
        joined = s.scalars(
            delete(RidePassenger).where(RidePassenger.username == username).returning(RidePassenger.ride_id)
        ).all()
        if joined:
            s.execute(
                update(Ride).where(Ride.id.in_(joined)).values(seats_taken=Ride.seats_taken - 1),
                execution_options={"synchronize_session": False},
            )
        # FOR UPDATE: on PostgreSQL, a join cannot add a passenger between the two deletes.
        driven = s.scalars(select(Ride.id).where(Ride.driver == username).with_for_update()).all()
        if driven:
            s.execute(delete(RidePassenger).where(RidePassenger.ride_id.in_(driven)))
            s.execute(delete(Ride).where(Ride.id.in_(driven)))

    run(work)
    return "", 204


# --- rides -----------------------------------------------------------------------------

@api.post("/rides")
def create_ride():
    body = json_body({"driver", "source", "destination", "departure", "seats"})
    values = {
        "driver": username_field(body["driver"], "driver"),
        "source": text_field(body["source"], "source", PLACE_LEN),
        "destination": text_field(body["destination"], "destination", PLACE_LEN),
        "departure": time_field(body["departure"], "departure"),
        "seats": int_field(body["seats"], "seats", 1, MAX_SEATS),
    }
    if values["departure"] <= now():
        raise bad_request("departure must be in the future")

    def work(s: Session):
        if not user_exists(s, values["driver"]):
            raise ApiError(404, "user_not_found", f"no user {values['driver']!r}")
        ride = Ride(**values, seats_taken=0)
        s.add(ride)
        s.flush()  # INSERT ... RETURNING id
        return ride_json(ride) | {"passengers": []}

    out = run(work)
    return out, 201, {"Location": url_for(".get_ride", ride_id=out["id"])}


@api.get("/rides")
def upcoming_rides():
    args = request.args.to_dict()
    query = select(Ride).where(Ride.departure > now()).order_by(Ride.departure, Ride.id)
    for field in ("source", "destination"):
        if field in args:
            query = query.where(getattr(Ride, field) == text_field(args[field], field, PLACE_LEN))
    limit = args.get("limit", "50")
    if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= 100):
        raise bad_request("limit must be an integer from 1 to 100")
    query = query.limit(int(limit))
    return {"rides": run(lambda s: [ride_json(r) for r in s.scalars(query)])}


@api.get("/rides/<ride_id>")
def get_ride(ride_id: str):
    rid = ride_id_arg(ride_id)

    def work(s: Session):
        ride = s.get(Ride, rid)
        if ride is None:
            raise ApiError(404, "ride_not_found", f"no ride {rid}")
        return ride_json(ride, with_passengers=True)

    return run(work)


@api.post("/rides/<ride_id>")
def join_ride(ride_id: str):
    rid = ride_id_arg(ride_id)
    username = username_field(json_body({"username"})["username"])

    def work(s: Session):
        at = now()
        # Take the seat first, in one conditional UPDATE: the row's lock (PostgreSQL) or the
        # shard's writer (Cairn) makes concurrent joiners check `seats_taken < seats` one
        # after another, so a ride is never overbooked. Touching the ride's shard first also
        # means that on Cairn a joiner waits there holding nothing, rather than dying (40001).
        took = s.execute(
            update(Ride)
            .where(Ride.id == rid, Ride.seats_taken < Ride.seats, Ride.driver != username, Ride.departure > at)
            .values(seats_taken=Ride.seats_taken + 1)
            .returning(Ride.id)
        ).first()
        joined = took is not None and s.execute(
            insert(RidePassenger)
            .values(ride_id=rid, username=username, joined_at=at)
            .on_conflict_do_nothing()
            .returning(RidePassenger.username)
        ).first()
        if not joined or not user_exists(s, username):
            raise why_not_joined(s, rid, username, at)  # rolls the seat back too
        return ride_json(s.get(Ride, rid), with_passengers=True)

    return run(work), 201


def why_not_joined(s: Session, rid: int, username: str, at: datetime) -> ApiError:
    ride = s.get(Ride, rid)
    if ride is None:
        return ApiError(404, "ride_not_found", f"no ride {rid}")
    if not user_exists(s, username):
        return ApiError(404, "user_not_found", f"no user {username!r}")
    if ride.driver == username:
        return ApiError(409, "own_ride", "a driver cannot join their own ride")
    if s.get(RidePassenger, (rid, username)) is not None:
        return ApiError(409, "already_joined", f"{username!r} has already joined ride {rid}")
    if ride.departure <= at:
        return ApiError(409, "ride_departed", f"ride {rid} has already departed")
    return ApiError(409, "ride_full", f"ride {rid} has no free seat")


# --- maintenance -----------------------------------------------------------------------

@api.post("/db/clear")
def clear():
    # One TRUNCATE for all three tables (ride_passengers refers to rides).
    run(lambda s: s.execute(text("TRUNCATE ride_passengers, rides, users")))
    return "", 204

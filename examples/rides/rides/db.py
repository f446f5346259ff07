"""The engine and the one way the API touches the database: `transaction(engine, work)`."""

import random
import time
from typing import Callable, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

T = TypeVar("T")

# 40001 serialization_failure: Cairn answers it when a transaction would have to wait for a
# shard held by an older transaction (wait-die, so there are no deadlocks), and PostgreSQL
# under SERIALIZABLE on a concurrent update. 40P01 deadlock_detected: PostgreSQL's lock
# cycles. Both mean "nothing was committed, run the whole transaction again".
RETRYABLE_SQLSTATES = {"40001", "40P01"}
MAX_ATTEMPTS = 12
BACKOFF_BASE_S = 0.005
BACKOFF_CAP_S = 0.25  # so the worst case sleeps about 2 s in all before giving up


def make_engine(url: str, isolation_level: str | None = None) -> Engine:
    options = {}
    if isolation_level:  # e.g. SERIALIZABLE, to see PostgreSQL answer 40001 as Cairn does
        options["isolation_level"] = isolation_level
    # connect_timeout is a libpq option: it bounds a connect, and sends no SQL.
    return create_engine(url, connect_args={"connect_timeout": 10}, **options)


def sqlstate(error: DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


def transaction(engine: Engine, work: Callable[[Session], T]) -> T:
    """Run `work(session)` in one transaction and commit; on 40001/40P01 run it again.

    `work` must be safe to repeat: it gets a fresh session each attempt, and anything it
    returns should be plain data built inside the transaction. An exception from `work`
    (such as an ApiError) rolls the transaction back and propagates unchanged.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with Session(engine) as session, session.begin():  # commits, or rolls back on error
                return work(session)
        except DBAPIError as e:
            # The failure may come from any statement or from COMMIT itself; either way the
            # transaction is gone as a whole, so retrying it from the start is correct.
            if sqlstate(e) not in RETRYABLE_SQLSTATES or attempt == MAX_ATTEMPTS:
                raise
        # Exponential backoff with full jitter, so that contenders do not collide again in step.
        time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))
    raise AssertionError("unreachable")

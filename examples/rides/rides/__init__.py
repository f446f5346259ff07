"""Rides: a small ride-sharing service on Flask + SQLAlchemy 2 + psycopg 3.

Run it with `flask --app rides run` (RIDES_DATABASE_URL names the database).
"""

import os

from flask import Flask
from werkzeug.exceptions import HTTPException

from .api import ApiError, api
from .db import make_engine


def error(status: int, code: str, message: str):
    return {"error": {"code": code, "message": message}}, status


def create_app(database_url: str | None = None) -> Flask:
    url = database_url or os.environ.get("RIDES_DATABASE_URL")
    if not url:
        raise RuntimeError("set RIDES_DATABASE_URL, e.g. postgresql+psycopg://cairn@127.0.0.1:5433/cairn")
    app = Flask(__name__)
    app.extensions["rides.engine"] = make_engine(url, os.environ.get("RIDES_ISOLATION_LEVEL"))
    app.register_blueprint(api)

    @app.errorhandler(ApiError)
    def api_error(e: ApiError):
        return error(e.status, e.code, e.message)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):  # unknown routes, wrong methods, ...
        return error(e.code or 500, e.name.lower().replace(" ", "_"), e.description or e.name)

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        app.logger.exception("unhandled error")
        return error(500, "internal_error", "internal error")

    return app

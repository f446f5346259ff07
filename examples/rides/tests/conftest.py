import os
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from rides import create_app

HERE = Path(__file__).resolve().parent.parent  # examples/rides


def alembic_config(url: str) -> Config:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolates %
    cfg.attributes["configure_logger"] = False
    return cfg


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ.get("RIDES_DATABASE_URL")
    if not url:
        pytest.exit("set RIDES_DATABASE_URL, e.g. postgresql+psycopg://cairn@127.0.0.1:5433/cairn", returncode=2)
    return url


@pytest.fixture(scope="session")
def migrated(database_url):
    cfg = alembic_config(database_url)
    command.upgrade(cfg, "head")
    return cfg


@pytest.fixture(scope="session")
def app(migrated, database_url):
    app = create_app(database_url)
    app.config["TESTING"] = True
    yield app
    app.extensions["rides.engine"].dispose()


@pytest.fixture
def client(app):
    client = app.test_client()
    assert client.post("/api/v1/db/clear").status_code == 204  # every test starts empty
    return client

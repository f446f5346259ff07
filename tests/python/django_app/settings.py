"""Minimal Django settings for tests/python/django_orm.py. The database comes from the
CAIRN_DATABASE_URL environment variable (postgres://user[:password]@host:port/name,
or postgres://user@/name?host=/socket/dir&port=N)."""

import os
from urllib.parse import parse_qs, unquote, urlsplit

_url = urlsplit(os.environ.get("CAIRN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
_query = parse_qs(_url.query)  # libpq-style ?host=/socket/dir is honoured too

SECRET_KEY = "cairn-test-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# contenttypes is what most projects have at least; django.contrib.auth adds foreign keys
# that are not co-located (auth_permission.content_type_id, auth_user_groups, ...), so it is
# left out here: set DJANGO_WITH_AUTH=1 to include it.
INSTALLED_APPS = ["django.contrib.contenttypes", "library"]
if os.environ.get("DJANGO_WITH_AUTH"):
    INSTALLED_APPS.insert(1, "django.contrib.auth")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _query.get("host", [_url.hostname or ""])[0],
        "PORT": _query.get("port", [str(_url.port or "")])[0],
    }
}

"""Django 5 (with psycopg 3) against a database, unchanged: `migrate` (Django's own
django_migrations and contenttypes tables, and the library app of django_app/: an
identity primary key, varchar, numeric, boolean, timestamptz, unique, indexes, and a
foreign key added by ALTER TABLE ... DEFERRABLE INITIALLY DEFERRED), the ORM (CRUD, a
select_related join, aggregates, transaction.atomic rollbacks and savepoints, a refused
orphan row), `inspectdb`, then `migrate library zero`.

Usage: django_orm.py URL (postgres://user[:password]@host:port/name; postgresql:// and
postgresql+psycopg:// are accepted too). Idempotent: drops what it creates first.
Exits non-zero on failure."""

import io
import os
import sys
from datetime import datetime, timezone
from decimal import Decimal

sys.dont_write_bytecode = True  # nothing written into the repository's django_app/

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "django_app"))

# Django's own tables, in an order that drops referencing tables first.
DJANGO_TABLES = [
    "library_book",
    "library_author",
    "auth_user_user_permissions",
    "auth_user_groups",
    "auth_group_permissions",
    "auth_permission",
    "auth_group",
    "auth_user",
    "django_content_type",
    "django_migrations",
]


def main(url: str) -> None:
    os.environ["CAIRN_DATABASE_URL"] = "postgres://" + url.split("://", 1)[1]
    os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
    import django

    django.setup()
    from django.contrib.contenttypes.models import ContentType
    from django.core.management import call_command
    from django.db import IntegrityError, connection, transaction
    from django.db.backends.postgresql.psycopg_any import is_psycopg3
    from django.db.models import Avg, Count, Max, Sum
    from django.test.utils import CaptureQueriesContext
    from library.models import Author, Book

    assert is_psycopg3, "Django should be using psycopg 3"
    assert connection.pg_version >= 130000, connection.pg_version

    with connection.cursor() as c:
        for t in DJANGO_TABLES:
            c.execute(f'DROP TABLE IF EXISTS "{t}"')

    # migrate: django_migrations, contenttypes (0001, 0002 drops a column) and the app.
    out = io.StringIO()
    call_command("migrate", interactive=False, verbosity=1, stdout=out)
    log = out.getvalue()
    for m in ("contenttypes.0001_initial", "contenttypes.0002_remove_content_type_name", "library.0001_initial"):
        assert f"Applying {m}... OK" in log, log
    tables = set(connection.introspection.table_names())
    assert {"django_migrations", "django_content_type", "library_author", "library_book"} <= tables, tables
    out = io.StringIO()
    call_command("migrate", interactive=False, verbosity=1, stdout=out)
    assert "No migrations to apply." in out.getvalue(), out.getvalue()
    # post_migrate made the content types of the app's models.
    assert sorted(ContentType.objects.filter(app_label="library").values_list("model", flat=True)) == ["author", "book"]
    print("django: migrate applied contenttypes and library; a second migrate applies nothing")

    with connection.cursor() as c:
        constraints = connection.introspection.get_constraints(c, "library_book")
    fks = [v["foreign_key"] for v in constraints.values() if v["foreign_key"]]
    assert fks == [("library_author", "id")], constraints
    pk = [v["columns"] for v in constraints.values() if v["primary_key"]]
    assert pk == [["author_id", "id"]], constraints
    print("django: library_book has primary key (author_id, id) and a foreign key to library_author(id)")

    # CRUD.
    ann = Author.objects.create(name="ann")
    bob = Author.objects.create(name="bob", active=False)
    assert ann.id is not None and bob.id is not None and ann.id != bob.id
    when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    Book.objects.create(author=ann, id=1, title="Dune", price=Decimal("9.99"), published=when)
    Book.objects.create(author=ann, id=2, title="Emma", price=Decimal("12.50"))
    Book.objects.create(author=bob, id=1, title="Ulysses", price=Decimal("20.00"), in_stock=False)
    Book.objects.create(author=bob, id=2, title="Draft", price=Decimal("1.00"))
    assert Book.objects.count() == 4
    assert Book.objects.filter(title="Emma").update(price=Decimal("13.75")) == 1
    emma = Book.objects.get(pk=(ann.id, 2))
    assert emma.price == Decimal("13.75") and emma.published is None, (emma.price, emma.published)
    emma.in_stock = False
    emma.save()
    assert Book.objects.get(author=ann, id=2).in_stock is False
    Book.objects.filter(title="Draft").delete()
    assert Book.objects.count() == 3
    assert Author.objects.get(name="bob").active is False
    assert Book.objects.get(title="Dune").published == when
    print("django: create, update (queryset and save), get by composite pk, delete")

    # A join: select_related fetches each book's author in the same query.
    with CaptureQueriesContext(connection) as q:
        rows = [(b.author.name, b.title, b.price) for b in Book.objects.select_related("author").order_by("author__name", "id")]
    assert rows == [("ann", "Dune", Decimal("9.99")), ("ann", "Emma", Decimal("13.75")), ("bob", "Ulysses", Decimal("20.00"))], rows
    assert len(q.captured_queries) == 1 and "INNER JOIN" in q.captured_queries[0]["sql"], q.captured_queries
    assert list(Book.objects.filter(author__name="ann", price__gt=10).values_list("title", flat=True)) == ["Emma"]
    print("django: select_related is one INNER JOIN; a filter across the relation")

    # Aggregates, over the table and grouped by author.
    agg = Book.objects.aggregate(total=Sum("price"), n=Count("id"), avg=Avg("price"), top=Max("price"))
    assert agg["total"] == Decimal("43.74") and agg["n"] == 3 and agg["top"] == Decimal("20.00"), agg
    assert round(agg["avg"], 2) == Decimal("14.58"), agg
    per = list(Author.objects.annotate(n=Count("books"), spent=Sum("books__price")).order_by("name").values_list("name", "n", "spent"))
    assert per == [("ann", 2, Decimal("23.74")), ("bob", 1, Decimal("20.00"))], per
    print("django: aggregate (sum, count, avg, max) and annotate with GROUP BY:", per)

    # transaction.atomic: an exception rolls everything back.
    try:
        with transaction.atomic():
            cid = Author.objects.create(name="cid")
            Book.objects.create(author=cid, id=1, title="Lost", price=Decimal("1.00"))
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert not Author.objects.filter(name="cid").exists() and not Book.objects.filter(title="Lost").exists()
    # A nested atomic is a savepoint: the unique violation inside it is undone, the rest kept.
    with transaction.atomic():
        Author.objects.create(name="dee")
        try:
            with transaction.atomic():
                Author.objects.create(name="ann")
            raise AssertionError("a duplicate author name was accepted")
        except IntegrityError:
            pass
    assert Author.objects.filter(name="dee").exists() and Author.objects.filter(name="ann").count() == 1
    # A book whose author does not exist is refused (at the statement or, deferred, at commit).
    try:
        with transaction.atomic():
            Book.objects.create(author_id=999999, id=1, title="Orphan", price=Decimal("1.00"))
        raise AssertionError("an orphan book was accepted")
    except IntegrityError:
        pass
    assert not Book.objects.filter(title="Orphan").exists()
    print("django: atomic rollback, savepoint rollback of a unique violation, foreign key enforced")

    # Django's on_delete=CASCADE is done by the ORM: it deletes the books, then the author.
    deleted, per_model = Author.objects.filter(name="bob").delete()
    assert per_model == {"library.Book": 1, "library.Author": 1}, per_model
    print("django: deleting an author deletes its books")

    # inspectdb reads the catalogs back into models.
    out = io.StringIO()
    call_command("inspectdb", "library_author", "library_book", stdout=out)
    src = out.getvalue()
    for needle in (
        "class LibraryAuthor(models.Model):",
        "name = models.CharField(unique=True, max_length=50)",
        "active = models.BooleanField()",
        "joined = models.DateTimeField()",
        "db_table = 'library_author'",
        "class LibraryBook(models.Model):",
        "pk = models.CompositePrimaryKey('author_id', 'id')",
        "author = models.ForeignKey(LibraryAuthor, models.DO_NOTHING)",
        "id = models.IntegerField()",
        "title = models.CharField(max_length=120)",
        "price = models.DecimalField(max_digits=10, decimal_places=2)",
        "in_stock = models.BooleanField()",
        "published = models.DateTimeField(blank=True, null=True)",
        "db_table = 'library_book'",
    ):
        assert needle in src, (needle, src)
    print("django: inspectdb names both tables, every field, the composite key and the foreign key")

    # Unapply the app's migration: DROP TABLE (the foreign key first).
    call_command("migrate", "library", "zero", interactive=False, verbosity=0)
    tables = set(connection.introspection.table_names())
    assert not {"library_author", "library_book"} & tables, tables
    with connection.cursor() as c:
        for t in DJANGO_TABLES:
            c.execute(f'DROP TABLE IF EXISTS "{t}"')
    connection.close()
    print("django: ok")


if __name__ == "__main__":
    main(sys.argv[1])

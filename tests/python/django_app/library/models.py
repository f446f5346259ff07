"""Two models with a ForeignKey. On Cairn a foreign key must be co-located: the
referencing column is the first primary-key column of its table and refers to the first
primary-key column of the other. So Book's primary key is (author_id, id), a Django 5.2
CompositePrimaryKey, and its ForeignKey to Author is the first column of it."""

from django.db import models
from django.utils import timezone


class Author(models.Model):
    name = models.CharField(max_length=50, unique=True)
    active = models.BooleanField(default=True)
    joined = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.name


class Book(models.Model):
    pk = models.CompositePrimaryKey("author_id", "id")
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    id = models.IntegerField()
    title = models.CharField(max_length=120, db_index=True)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    in_stock = models.BooleanField(default=True)
    published = models.DateTimeField(null=True)

    class Meta:
        indexes = [models.Index(fields=["published"], name="library_book_published_idx")]

    def __str__(self):
        return self.title

"""The business rows of the example: an order whose report a DXF task builds."""

from __future__ import annotations

from django.db import models


class Order(models.Model):  # type: ignore[misc]
    """One order; its ``key`` is also the key of the DXF task submitted with it."""

    key = models.CharField(max_length=100, unique=True)
    items = models.PositiveIntegerField()
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.key

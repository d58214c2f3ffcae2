"""``POST /orders/`` submits, ``GET /orders/<key>/`` shows progress."""

from __future__ import annotations

from django.urls import path

from orders import views

urlpatterns = [
    path("", views.create_order, name="create-order"),
    path("<str:key>/", views.order_status, name="order-status"),
]

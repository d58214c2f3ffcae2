"""The example's business table (SQLAlchemy Core) and its engine, kept in ``app.extensions["shop_db"]``."""

from __future__ import annotations

from flask import Flask, current_app
from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, String, Table, create_engine, func

metadata = MetaData()
orders = Table(
    "shop_order",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(100), nullable=False, unique=True),
    Column("items", Integer, nullable=False),
    Column("created", DateTime, nullable=False, server_default=func.now()),
)


def init_app(app: Flask) -> None:
    engine = create_engine(app.config["DATABASE_URL"], pool_pre_ping=True)
    metadata.create_all(engine)
    app.extensions["shop_db"] = engine


def engine() -> Engine:
    value = current_app.extensions["shop_db"]
    assert isinstance(value, Engine)
    return value

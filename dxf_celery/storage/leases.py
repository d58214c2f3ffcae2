"""Leases: a named, expiring lock in the database (the scheduler pass and GC run under one)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Connection, delete, insert, or_, select, update
from sqlalchemy import exc as sa_exc

from dxf_celery.storage.base import StorageBase
from dxf_celery.storage.clock import read_server_now, server_now
from dxf_celery.storage.tables import lease_table


class Leases(StorageBase):
    """``dxf_lease``: a guarded update (owner = me or expired) falling back to an insert."""

    def try_acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or extend the lease ``name`` for ``ttl_seconds``; False while someone else holds it.

        Expiry is judged and stamped on the database's clock, so holders on machines whose
        clocks disagree cannot both believe they hold it.
        """

        def txn(conn: Connection) -> bool:
            now = read_server_now(conn)
            expires = now + timedelta(seconds=ttl_seconds)
            result = conn.execute(
                update(lease_table)
                .where(lease_table.c.name == name, or_(lease_table.c.owner == owner, lease_table.c.expires_at < now))
                .values(owner=owner, expires_at=expires)
            )
            if result.rowcount > 0:
                return True
            if conn.execute(select(lease_table.c.name).where(lease_table.c.name == name)).first() is not None:
                return False
            conn.execute(insert(lease_table).values(name=name, owner=owner, expires_at=expires))
            return True

        try:
            return self._write(txn)
        except sa_exc.IntegrityError:
            return False

    def release_lease(self, name: str, owner: str) -> None:
        stmt = delete(lease_table).where(lease_table.c.name == name, lease_table.c.owner == owner)
        self._write(lambda conn: conn.execute(stmt))

    def get_lease_owner(self, name: str) -> str | None:
        """The current holder of a lease that has not expired, or None."""
        stmt = select(lease_table.c.owner).where(lease_table.c.name == name, lease_table.c.expires_at >= server_now())
        return self._read(lambda conn: conn.execute(stmt).scalar())

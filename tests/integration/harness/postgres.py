"""Fresh databases on the throwaway PostgreSQL cluster that scripts/test.sh starts."""

from __future__ import annotations

import contextlib
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg


@contextlib.contextmanager
def fresh_database(server_url: str):
    """Create an empty database on `server_url`, yield its URL, drop it afterwards."""
    name = f"tv_it_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""The PostgreSQL fixtures (``postgres``, ``pg_url``) of :mod:`tests.postgres_server` for the library tests."""

from tests.postgres_server import pg_url, postgres  # noqa: F401 - fixtures

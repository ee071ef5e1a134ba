"""The same eventsourcing recorder cases on the library's own PostgreSQL recorders
(``eventsourcing.postgres``, psycopg) against the same PostgreSQL, so that their
``test_performance`` / ``test_concurrent_throughput`` figures can be read side by
side with ``test_eventsourcing_suites.py``::

    .venv/bin/python -m pytest -s -p no:randomly tests/client/test_eventsourcing_suites.py \\
        tests/client/test_eventsourcing_baseline.py -k "performance or throughput"
"""

from __future__ import annotations

from typing import ClassVar
from unittest import TestCase
from urllib.parse import urlparse

from eventsourcing.persistence import AggregateRecorder, ApplicationRecorder, ProcessRecorder
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresProcessRecorder,
)
from eventsourcing.tests import persistence as cases

from tests.client import servers
from tests.conftest import postgres_unavailable
from tests.support import ADMIN_DSN, create_database, drop_database


class OwnDatabase(TestCase):
    """A database per test class, dropped afterwards."""

    database: ClassVar[str] = ""

    @classmethod
    def setUpClass(cls) -> None:
        reason = postgres_unavailable()
        if reason is not None:
            raise __import__("unittest").SkipTest(reason)
        cls.database = servers.loop().run(create_database())

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.database:
            servers.loop().run(drop_database(cls.database))

    def setUp(self) -> None:
        url = urlparse(ADMIN_DSN)
        self.datastore = PostgresDatastore(
            self.database,
            url.hostname or "127.0.0.1",
            url.port or 5432,
            url.username or "postgres",
            url.password or "",
            pool_size=4,
        )
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        with self.datastore.transaction(commit=True) as curs:
            for table in ("stored_events", "notification_tracking"):
                curs.execute(f"DROP TABLE IF EXISTS {table}")
        self.datastore.close()


class TestPostgresAggregateRecorderBaseline(OwnDatabase, cases.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        recorder = PostgresAggregateRecorder(self.datastore)
        recorder.create_table()
        return recorder


class TestPostgresApplicationRecorderBaseline(OwnDatabase, cases.ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        recorder = PostgresApplicationRecorder(self.datastore)
        recorder.create_table()
        return recorder


class TestPostgresProcessRecorderBaseline(OwnDatabase, cases.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        recorder = PostgresProcessRecorder(self.datastore)
        recorder.create_table()
        return recorder


del OwnDatabase

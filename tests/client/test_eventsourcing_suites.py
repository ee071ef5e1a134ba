"""The eventsourcing library's own test cases for persistence modules, run against
``eventstreaming_client.eventsourcing`` on a live server, on both backends.

Every test gets a fresh server on an empty store (in memory, or a PostgreSQL
database cloned from a migrated template), as eventsourcing's own PostgreSQL tests
drop their tables around each test: several cases expect the application sequence
to start at notification id 1.

Tracking records are consumer checkpoints on the service's global log by default,
which the service accepts only at positions its log has (the upstream application
keeps its events on the same service). The library's tracking cases track made-up
upstream notification ids (1..100) on an empty recorder, so in that mode their
fixture first writes 200 events of an upstream application; the same cases also run
unseeded with ``EVENTSTREAMING_TRACKING=events``, where any id can be tracked.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar
from unittest import TestCase

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    TrackingRecorder,
)

# Imported as modules: their abstract cases must not be collected here themselves.
from eventsourcing.tests import application as app_cases
from eventsourcing.tests import persistence as cases
from eventsourcing.utils import Environment

from eventstreaming_client import Client, NewEvent
from eventstreaming_client.eventsourcing import (
    EventStreamingAggregateRecorder,
    EventStreamingApplicationRecorder,
    EventStreamingProcessRecorder,
    EventStreamingTrackingRecorder,
    Factory,
)
from tests.client import servers

MODULE = "eventstreaming_client.eventsourcing"
#: Positions written before a checkpoint-mode tracking case (it tracks ids <= 100).
UPSTREAM_EVENTS = 200


class FreshServer(TestCase):
    """A new server on an empty store for each test, and a client on it."""

    backend: ClassVar[str] = "memory"
    tracking: ClassVar[str] = "checkpoints"

    def setUp(self) -> None:
        reason = servers.skip_reason(self.backend)
        if reason is not None:
            self.skipTest(reason)
        self.server = servers.fresh(self.backend)
        self.client = Client(self.server.address)
        super().setUp()

    def tearDown(self) -> None:
        try:
            super().tearDown()
        finally:
            self.client.close()
            self.server.stop()

    def seed_upstream(self) -> None:
        """Give the log the positions an upstream application's notifications have."""
        if self.tracking == "checkpoints":
            self.client.append_to_stream(
                "upstream:seed", [NewEvent("Seeded") for _ in range(UPSTREAM_EVENTS)]
            )


# -- the recorder cases ----------------------------------------------------------------------
class AggregateRecorderCase(FreshServer, cases.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return EventStreamingAggregateRecorder(self.client, "app")


class SnapshotRecorderCase(FreshServer, cases.AggregateRecorderTestCase):
    """The same case on a snapshot store (versions may skip)."""

    def create_recorder(self) -> AggregateRecorder:
        return EventStreamingAggregateRecorder(self.client, "app", purpose="snapshots")


class ApplicationRecorderCase(FreshServer, cases.ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        return EventStreamingApplicationRecorder(self.client, "app")

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class NonInterleavingCase(FreshServer, cases.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return EventStreamingApplicationRecorder(self.client, "app")


class TrackingRecorderCase(FreshServer, cases.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        self.seed_upstream()
        return EventStreamingTrackingRecorder(self.client, "app", mode=self.tracking)


class ProcessRecorderCase(FreshServer, cases.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        self.seed_upstream()
        return EventStreamingProcessRecorder(self.client, "app", mode=self.tracking)


class MyTrackingRecorder(EventStreamingTrackingRecorder):
    pass


class FactoryCase(FreshServer, cases.InfrastructureFactoryTestCase[Factory]):
    def setUp(self) -> None:
        reason = servers.skip_reason(self.backend)
        if reason is not None:
            self.skipTest(reason)
        self.server = servers.fresh(self.backend)
        self.client = Client(self.server.address)
        self.env = Environment(
            "TestCase",
            {Factory.PERSISTENCE_MODULE: MODULE, Factory.ADDRESS: self.server.address},
        )
        cases.InfrastructureFactoryTestCase.setUp(self)

    def tearDown(self) -> None:
        try:
            cases.InfrastructureFactoryTestCase.tearDown(self)
        finally:
            self.client.close()
            self.server.stop()

    def expected_factory_class(self) -> type[Factory]:
        return Factory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return EventStreamingAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return EventStreamingApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return EventStreamingTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return MyTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return EventStreamingProcessRecorder


# -- the application cases: the module chosen through the environment -----------------------
class WithEventStreaming(FreshServer):
    expected_factory_topic = f"{MODULE}:Factory"
    _saved: dict[str, str | None]

    def setUp(self) -> None:
        super().setUp()
        variables = {
            "PERSISTENCE_MODULE": MODULE,
            "EVENTSTREAMING_ADDRESS": self.server.address,
        }
        self._saved = {key: os.environ.get(key) for key in variables}
        os.environ.update(variables)

    def tearDown(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        super().tearDown()


class ApplicationCase(WithEventStreaming, app_cases.ApplicationTestCase):
    pass


class ExampleApplicationCase(WithEventStreaming, app_cases.ExampleApplicationTestCase):
    pass


# -- one concrete class per case and backend (and tracking mode) -------------------------------
_CASES: list[tuple[type[Any], tuple[str, ...]]] = [
    (AggregateRecorderCase, ("checkpoints",)),
    (SnapshotRecorderCase, ("checkpoints",)),
    (ApplicationRecorderCase, ("checkpoints",)),
    (NonInterleavingCase, ("checkpoints",)),
    (TrackingRecorderCase, ("checkpoints", "events")),
    (ProcessRecorderCase, ("checkpoints", "events")),
    (FactoryCase, ("checkpoints",)),
    (ApplicationCase, ("checkpoints",)),
    (ExampleApplicationCase, ("checkpoints",)),
]

for _case, _modes in _CASES:
    for _backend in ("memory", "postgres"):
        for _mode in _modes:
            _suffix = "" if len(_modes) == 1 else _mode.capitalize()
            _name = f"Test{_case.__name__.removesuffix('Case')}{_suffix}{_backend.capitalize()}"
            globals()[_name] = type(
                _name, (_case,), {"backend": _backend, "tracking": _mode, "__module__": __name__}
            )

# The cases above are templates of the classes just made, not tests themselves.
del FreshServer, WithEventStreaming, AggregateRecorderCase, SnapshotRecorderCase
del ApplicationRecorderCase, NonInterleavingCase, TrackingRecorderCase, ProcessRecorderCase
del FactoryCase, ApplicationCase, ExampleApplicationCase, _case

"""A persistence module for the eventsourcing library on the EventStreaming service.

Select it the library's usual way::

    PERSISTENCE_MODULE=eventstreaming_client.eventsourcing
    EVENTSTREAMING_ADDRESS=localhost:50051

How the library's records map onto the service:

- an **aggregate sequence** is a persistent stream, ``<application>:<aggregate id>``;
  an event's ``originator_version`` is its offset plus the version the aggregate's
  first event had (kept with every event, so it is learnt from any read), and
  optimistic concurrency is the stream's ``expected_last_offset``: a version that is
  taken raises ``IntegrityError``;
- the **application sequence** is the service's global log read through the
  application's stream prefix: notification ids are global positions (dense and
  gap-safe on the service, so ``max_notification_id`` never skips an event that
  commits later); ``subscribe`` is a ``SubscribeToAll`` with that prefix;
- ``insert_events`` across several aggregates is one ``AppendToStreams`` call:
  all or nothing;
- **tracking records** are the service's consumer checkpoints on ``$all`` (group
  ``<application>:tracking:<upstream>``), written in the same transaction as the
  events (``EVENTSTREAMING_TRACKING=checkpoints``, the default). The service accepts
  a checkpoint only at a position its log has: the upstream application must keep
  its events on the same service. For an upstream elsewhere, set
  ``EVENTSTREAMING_TRACKING=events``: each tracking record is then an event in a
  stream ``<application>.tracking:<upstream>``, appended in the same call;
- snapshots go to streams ``<application>.snapshots:<aggregate id>``.

Settings (each may be prefixed with the application's name, as the library does):
``EVENTSTREAMING_ADDRESS`` (host:port), ``EVENTSTREAMING_TOKEN`` (bearer token),
``EVENTSTREAMING_TLS`` (y/n), ``EVENTSTREAMING_CACERT``,
``EVENTSTREAMING_CLIENT_CERT``, ``EVENTSTREAMING_CLIENT_KEY`` (PEM files),
``EVENTSTREAMING_SERVER_NAME``, ``EVENTSTREAMING_TIMEOUT`` (seconds),
``EVENTSTREAMING_STREAM_PREFIX`` (default: the application's name) and
``EVENTSTREAMING_TRACKING``.
"""

from __future__ import annotations

import itertools
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    Notification,
    OperationalError,
    PersistenceError,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

from eventstreaming_client import errors
from eventstreaming_client.models import (
    ALL,
    ConsumerCheckpoint,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)
from eventstreaming_client.sync.client import Client
from eventstreaming_client.sync.subscription import Subscription as StreamSubscription

__all__ = [
    "EventStreamingAggregateRecorder",
    "EventStreamingApplicationRecorder",
    "EventStreamingProcessRecorder",
    "EventStreamingTrackingRecorder",
    "Factory",
]

OCTET_STREAM = "application/octet-stream"
#: Metadata keys of a stored event.
VERSION_KEY = "originator_version"
ID_KEY = "originator_id"
ID_TYPE_KEY = "originator_id_type"
TRACKING_TYPE = "Tracking"
#: The service's page cap: longer selections are read a page at a time.
PAGE = 1000

_PLAIN = re.compile(r"[A-Za-z0-9-]")


def escape(text: str) -> str:
    """``text`` as part of a stream name: letters, digits and ``-`` as they are,
    every other character as ``_`` and the hex of its UTF-8 bytes. Injective, and
    never yields ``.`` or ``:``, which separate the parts of a name."""
    return "".join(
        c if _PLAIN.fullmatch(c) else "".join(f"_{b:02X}" for b in c.encode()) for c in text
    )


def _persistence_error(exc: errors.EventStreamingError) -> PersistenceError:
    """The eventsourcing error (PEP 249 names) a client error stands for."""
    if isinstance(
        exc, errors.WrongExpectedOffset | errors.DuplicateEvent | errors.CheckpointAlreadyCommitted
    ):
        return IntegrityError(str(exc))
    if isinstance(exc, errors.InvalidArgument | errors.OutOfRange):
        return DataError(str(exc))
    if isinstance(exc, errors.Unavailable | errors.DeadlineExceeded | errors.Unauthenticated):
        return OperationalError(str(exc))
    if isinstance(exc, errors.FailedPrecondition):
        return ProgrammingError(str(exc))
    return PersistenceError(str(exc))


class _Names:
    """The stream names and groups of one application."""

    def __init__(self, prefix: str) -> None:
        if not prefix or not prefix[0].isalnum():
            raise ProgrammingError(f"stream prefix {prefix!r} must start with a letter or digit")
        self.prefix = prefix

    def stream(self, purpose: str, originator_id: uuid.UUID | str) -> str:
        part = "" if purpose == "events" else f".{escape(purpose)}"
        return f"{self.prefix}{part}:{escape(str(originator_id))}"

    @property
    def notifications(self) -> str:
        """The prefix of every aggregate stream of the application sequence."""
        return f"{self.prefix}:"

    def tracking_group(self, upstream: str) -> str:
        return f"{self.prefix}:tracking:{upstream}"

    def tracking_stream(self, upstream: str) -> str:
        return f"{self.prefix}.tracking:{escape(upstream)}"


class EventStreamingAggregateRecorder(AggregateRecorder):
    """Aggregate sequences as persistent streams.

    ``purpose="events"`` (an application's events): versions are consecutive, so an
    offset maps to a version by the version of the stream's first event, and the
    expected last offset of an append follows from the versions written. Any other
    purpose (snapshots): versions may skip, each write checks the last version.
    """

    def __init__(self, client: Client, prefix: str, purpose: str = "events") -> None:
        self.client = client
        self.names = _Names(prefix)
        self.purpose = purpose
        self.consecutive = purpose == "events"
        #: stream name -> the version of its offset 0 (consecutive streams).
        self._bases: dict[str, int] = {}
        self._bases_lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------------
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._insert(stored_events, kwargs.get("tracking"))
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        groups = self._group(stored_events)
        if not groups and tracking is None:
            return []
        for attempt in range(2):
            appends = [self._append_of(name, events) for name, events in groups.items()]
            checkpoint, tracking_append = self._tracking_parts(tracking)
            if tracking_append is not None:
                appends.append(tracking_append)
            try:
                if len(appends) == 1 and checkpoint is None:
                    only = appends[0]
                    results = [
                        self.client.append_to_stream(
                            only.stream_name,
                            only.events,
                            expected_last_offset=only.expected_last_offset,
                        )
                    ]
                else:
                    results = self.client.append_to_streams(appends, checkpoint=checkpoint)
            except errors.WrongExpectedOffset as exc:
                self._tracking_conflict(tracking)
                if attempt == 0 and self._learn_bases(exc.actual_last_offsets, groups):
                    continue  # a stream written before this process saw it: try again
                raise IntegrityError(str(exc)) from exc
            except errors.OutOfRange as exc:
                raise self._tracking_out_of_range(tracking, exc) from exc
            except errors.EventStreamingError as exc:
                raise _persistence_error(exc) from exc
            self._after_write(groups, appends, results, tracking)
            return self._notification_ids(stored_events, groups, results)
        raise AssertionError("unreachable")  # pragma: no cover

    def _group(self, stored_events: Sequence[StoredEvent]) -> dict[str, list[StoredEvent]]:
        groups: dict[str, list[StoredEvent]] = {}
        for item in stored_events:
            groups.setdefault(self.names.stream(self.purpose, item.originator_id), []).append(item)
        for events in groups.values():
            versions = [e.originator_version for e in events]
            step_ok = all(b == a + 1 for a, b in itertools.pairwise(versions))
            if self.consecutive and not step_ok:
                raise IntegrityError(f"versions {versions} of one aggregate are not consecutive")
            if not all(b > a for a, b in itertools.pairwise(versions)):
                raise IntegrityError(f"versions {versions} of one aggregate do not increase")
        return groups

    def _append_of(self, stream_name: str, events: list[StoredEvent]) -> StreamAppend:
        first = events[0].originator_version
        if self.consecutive:
            with self._bases_lock:
                base = self._bases.get(stream_name)
            # An unknown stream is taken to be new: its first event fixes the base.
            expected = -1 if base is None else first - base - 1
            if expected < -1:
                raise IntegrityError(f"version {first} is before the aggregate's first event")
        else:
            last = self._last_event(stream_name)
            expected = -1 if last is None else last.offset
            if last is not None and first <= _version_of(last):
                raise IntegrityError(f"version {first} is not after {_version_of(last)}")
        return StreamAppend(
            stream_name, [self._new_event(e) for e in events], expected_last_offset=expected
        )

    @staticmethod
    def _new_event(item: StoredEvent) -> NewEvent:
        is_uuid = isinstance(item.originator_id, uuid.UUID)
        return NewEvent(
            event_type=item.topic,
            data=item.state,
            content_type=OCTET_STREAM,
            metadata={
                VERSION_KEY: str(item.originator_version),
                ID_KEY: str(item.originator_id),
                ID_TYPE_KEY: "uuid" if is_uuid else "str",
            },
            event_id=uuid.uuid4(),
        )

    def _learn_bases(self, actual: dict[str, int], groups: dict[str, list[StoredEvent]]) -> bool:
        """After ABORTED: learn the base of each failed stream that was unknown;
        True when that changes an expectation (so the call is worth repeating)."""
        if not self.consecutive:
            return False
        changed = False
        for name in actual:
            with self._bases_lock:
                known = name in self._bases
            if known or name not in groups:
                continue
            first = self._first_event(name)
            if first is None:
                continue
            base = _version_of(first) - first.offset
            with self._bases_lock:
                self._bases[name] = base
            if groups[name][0].originator_version - base - 1 != -1:
                changed = True
        return changed

    def _after_write(
        self,
        groups: dict[str, list[StoredEvent]],
        appends: list[StreamAppend],
        results: Sequence[Any],
        tracking: Tracking | None,
    ) -> None:
        if self.consecutive:
            with self._bases_lock:
                for (name, events), result in zip(groups.items(), results, strict=False):
                    self._bases[name] = events[0].originator_version - result.first_offset

    def _notification_ids(
        self,
        stored_events: Sequence[StoredEvent],
        groups: dict[str, list[StoredEvent]],
        results: Sequence[Any],
    ) -> list[int]:
        """Global positions in the order of ``stored_events`` (events of one call take
        consecutive positions, stream by stream in the order of the appends)."""
        position: dict[int, int] = {}
        for events, result in zip(groups.values(), results, strict=False):
            for i, item in enumerate(events):
                position[id(item)] = result.first_global_position + i
        return [position[id(item)] for item in stored_events]

    # -- tracking (used by the process recorder) ---------------------------------------------
    def _tracking_parts(
        self, tracking: Tracking | None
    ) -> tuple[ConsumerCheckpoint | None, StreamAppend | None]:
        return None, None

    def _tracking_conflict(self, tracking: Tracking | None) -> None:
        """Forget what is cached about a tracking stream after a failed append."""

    def _tracking_out_of_range(
        self, tracking: Tracking | None, exc: errors.OutOfRange
    ) -> PersistenceError:
        return DataError(str(exc))

    # -- reading ---------------------------------------------------------------------------
    def _first_event(self, stream_name: str) -> RecordedEvent | None:
        try:
            page = self.client.read_stream(stream_name, from_offset=0, max_count=1)
        except errors.StreamNotFound:
            return None
        except errors.EventStreamingError as exc:
            raise _persistence_error(exc) from exc
        return page.events[0] if page.events else None

    def _last_event(self, stream_name: str) -> RecordedEvent | None:
        try:
            page = self.client.read_stream(stream_name, from_offset=-1, max_count=1, backward=True)
        except errors.StreamNotFound:
            return None
        except errors.EventStreamingError as exc:
            raise _persistence_error(exc) from exc
        return page.events[0] if page.events else None

    def select_events(
        self,
        originator_id: uuid.UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        name = self.names.stream(self.purpose, originator_id)
        with self._bases_lock:
            base = self._bases.get(name) if self.consecutive else None
        if desc:
            start = -1 if base is None or lte is None else max(lte - base, 0)
        else:
            start = 0 if base is None or gt is None else max(gt + 1 - base, 0)
        found: list[StoredEvent] = []
        try:
            for event in self._read(name, start, desc, limit):
                version = _version_of(event)
                if self.consecutive and base is None:
                    base = version - event.offset
                    with self._bases_lock:
                        self._bases[name] = base
                if desc and gt is not None and version <= gt:
                    break
                if not desc and lte is not None and version > lte:
                    break
                if (gt is not None and version <= gt) or (lte is not None and version > lte):
                    continue
                found.append(_stored_event(event, originator_id))
                if limit is not None and len(found) >= limit:
                    break
        except errors.StreamNotFound:
            return []
        except errors.EventStreamingError as exc:
            raise _persistence_error(exc) from exc
        return found

    def _read(
        self, stream_name: str, start: int, backward: bool, limit: int | None
    ) -> Iterator[RecordedEvent]:
        page_size = min(PAGE, limit) if limit else PAGE
        return self.client.iter_stream(
            stream_name, from_offset=start, backward=backward, page_size=page_size
        )


def _version_of(event: RecordedEvent) -> int:
    try:
        return int(event.metadata[VERSION_KEY])
    except (KeyError, ValueError):
        raise DataError(
            f"event {event.event_id} of {event.stream_name} was not written by this module"
        ) from None


def _originator_id(event: RecordedEvent) -> uuid.UUID | str:
    text = event.metadata.get(ID_KEY, "")
    return uuid.UUID(text) if event.metadata.get(ID_TYPE_KEY) == "uuid" else text


def _stored_event(event: RecordedEvent, originator_id: uuid.UUID | str) -> StoredEvent:
    return StoredEvent(
        originator_id=originator_id,
        originator_version=_version_of(event),
        topic=event.event_type,
        state=event.data,
    )


def _notification(event: RecordedEvent) -> Notification:
    return Notification(
        id=event.global_position,
        originator_id=_originator_id(event),
        originator_version=_version_of(event),
        topic=event.event_type,
        state=event.data,
    )


class EventStreamingApplicationRecorder(EventStreamingAggregateRecorder, ApplicationRecorder):
    """Aggregate sequences plus the application sequence: the global log, read
    through the application's stream prefix; notification ids are global positions."""

    def __init__(self, client: Client, prefix: str, purpose: str = "events") -> None:
        super().__init__(client, prefix, purpose)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self._insert(stored_events, kwargs.get("tracking"))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        position = 1 if start is None else (start if inclusive_of_start else start + 1)
        found: list[Notification] = []
        try:
            while len(found) < limit:
                page = self.client.read_all(
                    from_position=max(position, 1),
                    max_count=min(PAGE, limit - len(found)),
                    stream_prefixes=[self.names.notifications],
                    event_types=topics,
                )
                for event in page.events:
                    if stop is not None and event.global_position > stop:
                        return found
                    found.append(_notification(event))
                if page.end_of_log or (not page.events and page.next_position <= position):
                    break
                position = page.next_position
        except errors.EventStreamingError as exc:
            raise _persistence_error(exc) from exc
        return found[:limit]

    def max_notification_id(self) -> int | None:
        try:
            page = self.client.read_all(
                from_position=0,
                max_count=1,
                backward=True,
                stream_prefixes=[self.names.notifications],
            )
        except errors.EventStreamingError as exc:
            raise _persistence_error(exc) from exc
        return page.events[0].global_position if page.events else None

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return EventStreamingSubscription(self, gt=gt, topics=topics)


class EventStreamingSubscription(Subscription[EventStreamingApplicationRecorder]):
    """The application sequence, live: ``SubscribeToAll`` with the application's
    prefix, resumed after the last notification on a disconnect."""

    def __init__(
        self,
        recorder: EventStreamingApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._events: StreamSubscription = recorder.client.subscribe(
            ALL,
            from_offset=None if gt is None else gt + 1,
            stream_prefixes=[recorder.names.notifications],
            event_types=topics,
        )

    def stop(self) -> None:
        super().stop()
        self._events.close()

    def __next__(self) -> Notification:
        if self._has_been_stopped:
            raise StopIteration
        try:
            event = next(self._events)
        except errors.EventStreamingError as exc:
            raise _persistence_error(exc) from exc
        notification = _notification(event)
        self._last_notification_id = notification.id
        return notification


class EventStreamingTrackingRecorder(TrackingRecorder):
    """Tracking records: consumer checkpoints on ``$all`` (``mode="checkpoints"``),
    or events of a tracking stream per upstream application (``mode="events"``)."""

    def __init__(self, client: Client, prefix: str, mode: str = "checkpoints") -> None:
        if mode not in ("checkpoints", "events"):
            raise ProgrammingError(f"EVENTSTREAMING_TRACKING is {mode!r}: checkpoints or events")
        self.client = client
        self.names = _Names(prefix)
        self.mode = mode
        #: upstream -> (offset of the tracking stream's last event, its id)
        self._tracked: dict[str, tuple[int, int]] = {}
        self._tracked_lock = threading.Lock()

    def insert_tracking(self, tracking: Tracking) -> None:
        checkpoint, append = self._tracking_parts(tracking)
        try:
            self.client.append_to_streams([append] if append else [], checkpoint=checkpoint)
        except errors.OutOfRange as exc:
            raise self._tracking_out_of_range(tracking, exc) from exc
        except errors.EventStreamingError as exc:
            self._tracking_conflict(tracking)
            raise _persistence_error(exc) from exc
        self._tracked_after(tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        try:
            if self.mode == "checkpoints":
                return self.client.get_consumer_offset(
                    ALL, self.names.tracking_group(application_name)
                )
            last = self._last_tracking(application_name)
        except errors.EventStreamingError as exc:
            raise _persistence_error(exc) from exc
        return None if last is None else last[1]

    def _last_tracking(self, upstream: str) -> tuple[int, int] | None:
        with self._tracked_lock:
            known = self._tracked.get(upstream)
        if known is not None:
            return known
        try:
            page = self.client.read_stream(
                self.names.tracking_stream(upstream), from_offset=-1, max_count=1, backward=True
            )
        except errors.StreamNotFound:
            return None
        if not page.events:
            return None
        event = page.events[0]
        found = (event.offset, int(event.json()["notification_id"]))
        with self._tracked_lock:
            self._tracked[upstream] = found
        return found

    def _tracking_parts(
        self, tracking: Tracking | None
    ) -> tuple[ConsumerCheckpoint | None, StreamAppend | None]:
        if tracking is None:
            return None, None
        if self.mode == "checkpoints":
            group = self.names.tracking_group(tracking.application_name)
            return ConsumerCheckpoint(ALL, group, tracking.notification_id), None
        try:
            last = self._last_tracking(tracking.application_name)
        except errors.EventStreamingError as exc:
            raise _persistence_error(exc) from exc
        if last is not None and tracking.notification_id <= last[1]:
            raise IntegrityError(
                f"notification {tracking.notification_id} of {tracking.application_name!r} "
                f"is not after the last one tracked ({last[1]})"
            )
        event = NewEvent(TRACKING_TYPE, {"notification_id": tracking.notification_id})
        return None, StreamAppend(
            self.names.tracking_stream(tracking.application_name),
            [event],
            expected_last_offset=-1 if last is None else last[0],
        )

    def _tracking_conflict(self, tracking: Tracking | None) -> None:
        if tracking is not None:
            with self._tracked_lock:
                self._tracked.pop(tracking.application_name, None)

    def _tracked_after(self, tracking: Tracking | None) -> None:
        if tracking is None or self.mode != "events":
            return
        with self._tracked_lock:
            last = self._tracked.get(tracking.application_name)
            offset = 0 if last is None else last[0] + 1
            self._tracked[tracking.application_name] = (offset, tracking.notification_id)

    def _tracking_out_of_range(
        self, tracking: Tracking | None, exc: errors.OutOfRange
    ) -> PersistenceError:
        return DataError(
            f"{exc.message}: tracking records are checkpoints on this service's global log, "
            "so a tracked notification id must be a position of it (the upstream "
            "application must keep its events on this service); for an upstream "
            "elsewhere set EVENTSTREAMING_TRACKING=events"
        )


class EventStreamingProcessRecorder(
    EventStreamingTrackingRecorder, EventStreamingApplicationRecorder, ProcessRecorder
):
    """An application recorder whose inserts carry a tracking record, in the same
    ``AppendToStreams`` call as the events."""

    def __init__(
        self, client: Client, prefix: str, purpose: str = "events", mode: str = "checkpoints"
    ) -> None:
        EventStreamingApplicationRecorder.__init__(self, client, prefix, purpose)
        EventStreamingTrackingRecorder.__init__(self, client, prefix, mode)

    def _after_write(
        self,
        groups: dict[str, list[StoredEvent]],
        appends: list[StreamAppend],
        results: Sequence[Any],
        tracking: Tracking | None,
    ) -> None:
        super()._after_write(groups, appends, results, tracking)
        self._tracked_after(tracking)


TTracking = TypeVar("TTracking", bound=TrackingRecorder)


class Factory(InfrastructureFactory[EventStreamingTrackingRecorder]):
    """Makes the recorders above, all on one client per application."""

    ADDRESS = "EVENTSTREAMING_ADDRESS"
    TOKEN = "EVENTSTREAMING_TOKEN"
    TLS = "EVENTSTREAMING_TLS"
    CACERT = "EVENTSTREAMING_CACERT"
    CLIENT_CERT = "EVENTSTREAMING_CLIENT_CERT"
    CLIENT_KEY = "EVENTSTREAMING_CLIENT_KEY"
    SERVER_NAME = "EVENTSTREAMING_SERVER_NAME"
    TIMEOUT = "EVENTSTREAMING_TIMEOUT"
    STREAM_PREFIX = "EVENTSTREAMING_STREAM_PREFIX"
    TRACKING = "EVENTSTREAMING_TRACKING"

    aggregate_recorder_class = EventStreamingAggregateRecorder
    application_recorder_class = EventStreamingApplicationRecorder
    tracking_recorder_class = EventStreamingTrackingRecorder
    process_recorder_class = EventStreamingProcessRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        options: dict[str, Any] = {"address": self.env.get(self.ADDRESS) or "localhost:50051"}
        if token := self.env.get(self.TOKEN):
            options["token"] = token
        if strtobool(self.env.get(self.TLS) or "no"):
            options["tls"] = True
        for key, option in (
            (self.CACERT, "root_certificates"),
            (self.CLIENT_CERT, "certificate_chain"),
            (self.CLIENT_KEY, "private_key"),
        ):
            if path := self.env.get(key):
                options[option] = path
        if server_name := self.env.get(self.SERVER_NAME):
            options["server_name"] = server_name
        if timeout := self.env.get(self.TIMEOUT):
            options["timeout"] = float(timeout)
        try:
            self.client = Client(**options)
        except (ValueError, OSError) as exc:
            raise ProgrammingError(f"cannot make the EventStreaming client: {exc}") from exc
        self.prefix = self.env.get(self.STREAM_PREFIX) or escape(self.env.name) or "eventsourcing"
        self.tracking_mode = (self.env.get(self.TRACKING) or "checkpoints").strip().lower()

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return type(self).aggregate_recorder_class(self.client, self.prefix, purpose)

    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        cls = resolve_topic(topic) if topic else type(self).application_recorder_class
        assert issubclass(cls, EventStreamingApplicationRecorder)
        return cast(ApplicationRecorder, cls(self.client, self.prefix))

    def tracking_recorder(
        self, tracking_recorder_class: type[EventStreamingTrackingRecorder] | None = None
    ) -> EventStreamingTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = (
                resolve_topic(topic) if topic else type(self).tracking_recorder_class
            )
        assert tracking_recorder_class is not None
        assert issubclass(tracking_recorder_class, EventStreamingTrackingRecorder)
        return tracking_recorder_class(self.client, self.prefix, self.tracking_mode)

    def process_recorder(self) -> ProcessRecorder:
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        cls = resolve_topic(topic) if topic else type(self).process_recorder_class
        assert issubclass(cls, EventStreamingProcessRecorder)
        return cast(ProcessRecorder, cls(self.client, self.prefix, mode=self.tracking_mode))

    def close(self) -> None:
        self.client.close()
        super().close()

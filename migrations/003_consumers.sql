-- Consumer groups' committed offsets on persistent streams.
--
-- One row per (stream, group): the last offset the group has processed. Rows go
-- with their stream (DeleteStream). Offsets are never renumbered, so a committed
-- offset stays meaningful after retention deletes the events below it.

CREATE TABLE event_streaming.consumer_offsets (
    stream_id         bigint      NOT NULL REFERENCES event_streaming.streams ON DELETE CASCADE,
    consumer_group    text        NOT NULL,
    committed_offset  bigint      NOT NULL CHECK (committed_offset >= 0),
    committed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (stream_id, consumer_group)
);

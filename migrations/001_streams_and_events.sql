-- Streams and the persistent event log.
--
-- Offsets are assigned under the stream row's lock, taken by append_events() and
-- held until commit, so offsets are gapless and commit in offset order even with
-- many writers on many server processes. The lock is FOR NO KEY UPDATE: writers
-- exclude each other, but the FOR KEY SHARE that foreign-key checks of other
-- tables take on the stream row (consumer offsets, dead letters) never waits for
-- it, so those writes neither queue behind appends nor deadlock with them.

CREATE SCHEMA IF NOT EXISTS event_streaming;

CREATE TABLE event_streaming.streams (
    stream_id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_name                 text        NOT NULL UNIQUE,
    -- 1 = persistent (log), 2 = ephemeral (queue); NULL until configured or written.
    stream_type                 smallint    CHECK (stream_type IN (1, 2)),
    -- Offset the next event (or queue message) gets: also the stream's length.
    next_offset                 bigint      NOT NULL DEFAULT 0,
    created_at                  timestamptz NOT NULL DEFAULT clock_timestamp(),
    retention_max_age           interval,
    retention_max_count         bigint      CHECK (retention_max_count > 0),
    max_delivery_attempts       integer     NOT NULL DEFAULT 5 CHECK (max_delivery_attempts > 0),
    default_visibility_timeout  interval    NOT NULL DEFAULT interval '30 seconds'
);

CREATE INDEX streams_name_pattern_idx ON event_streaming.streams (stream_name text_pattern_ops);

CREATE TABLE event_streaming.events (
    stream_id       bigint      NOT NULL REFERENCES event_streaming.streams ON DELETE CASCADE,
    stream_offset   bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    content_type    text        NOT NULL,
    -- Exactly one of data_json (application/json) and data_bytes (anything else).
    data_json       jsonb,
    data_bytes      bytea,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    correlation_id  text,
    causation_id    text,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (stream_id, stream_offset),
    CONSTRAINT events_one_payload CHECK ((data_json IS NULL) <> (data_bytes IS NULL))
);

CREATE UNIQUE INDEX events_stream_event_id_idx ON event_streaming.events (stream_id, event_id);
CREATE INDEX events_stream_type_idx ON event_streaming.events (stream_id, event_type, stream_offset);
CREATE INDEX events_correlation_idx ON event_streaming.events (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX events_stream_time_idx ON event_streaming.events (stream_id, created_at);
CREATE INDEX events_data_json_idx ON event_streaming.events USING gin (data_json jsonb_path_ops);

-- The row of a stream that is about to be written, locked until commit: created
-- (of type p_type) when missing, given p_type when it has no type yet. Returns the
-- stream's actual type, which the caller compares with the one it needs. The lock
-- is FOR NO KEY UPDATE (see the top of this file).
CREATE FUNCTION event_streaming.lock_stream(
    p_stream_name    text,
    p_type           smallint,
    OUT stream_id    bigint,
    OUT stream_type  smallint,
    OUT next_offset  bigint
) LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.stream_id, s.stream_type, s.next_offset INTO stream_id, stream_type, next_offset
      FROM event_streaming.streams s WHERE s.stream_name = p_stream_name FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        INSERT INTO event_streaming.streams AS s (stream_name, stream_type)
        VALUES (p_stream_name, p_type) ON CONFLICT (stream_name) DO NOTHING;
        SELECT s.stream_id, s.stream_type, s.next_offset INTO stream_id, stream_type, next_offset
          FROM event_streaming.streams s WHERE s.stream_name = p_stream_name FOR NO KEY UPDATE;
    END IF;
    IF stream_type IS NULL THEN
        UPDATE event_streaming.streams s SET stream_type = p_type
         WHERE s.stream_id = lock_stream.stream_id;
        stream_type := p_type;
    END IF;
END
$$;

-- Which of a batch's ids a stream already holds: matches (how many), exact (all
-- of them, in order, at consecutive offsets: an earlier append of the same batch),
-- first_offset (that append's first offset) and conflict_event_id (the first id of
-- the batch found). Only called when an append found a conflict, so it is planned
-- afresh each time (EXECUTE): with the actual stream the planner uses the unique
-- index rather than a generic plan cached while the table was young.
CREATE FUNCTION event_streaming.repeated_batch(
    p_stream_id           bigint,
    p_event_ids           uuid[],
    OUT matches           integer,
    OUT exact             boolean,
    OUT first_offset      bigint,
    OUT conflict_event_id uuid
) LANGUAGE plpgsql AS $$
DECLARE
    v_max_base bigint;
BEGIN
    EXECUTE 'SELECT count(*)::integer, min(e.stream_offset - (b.ord - 1)),
                    max(e.stream_offset - (b.ord - 1)), (array_agg(b.id ORDER BY b.ord))[1]
               FROM unnest($2) WITH ORDINALITY AS b(id, ord)
               JOIN event_streaming.events e ON e.stream_id = $1 AND e.event_id = b.id'
       INTO matches, first_offset, v_max_base, conflict_event_id
      USING p_stream_id, p_event_ids;
    exact := matches = cardinality(p_event_ids) AND first_offset = v_max_base;
END
$$;

-- Append a batch in one round trip. outcome: 0 appended, 1 exact repeat of an
-- earlier batch (nothing written, original offsets returned), 2 expected offset
-- mismatch (last_offset = the actual last offset), 3 partial repeat
-- (conflict_event_id = first id already present), 4 the stream is not a log
-- (actual_type says what it is).
CREATE FUNCTION event_streaming.append_events(
    p_stream_name     text,
    p_expected        bigint,
    p_event_ids       uuid[],
    p_event_types     text[],
    p_content_types   text[],
    p_data_json       jsonb[],
    p_data_bytes      bytea[],
    p_metadata        jsonb[],
    p_correlation_ids text[],
    p_causation_ids   text[]
) RETURNS TABLE (
    outcome            smallint,
    first_offset       bigint,
    last_offset        bigint,
    conflict_event_id  uuid,
    actual_type        smallint
) LANGUAGE plpgsql AS $$
DECLARE
    v_stream_id  bigint;
    v_type       smallint;
    v_next       bigint;
    v_count      integer := cardinality(p_event_ids);
    v_inserted   integer;
    v_repeat     record;
    v_now        timestamptz;
BEGIN
    SELECT l.stream_id, l.stream_type, l.next_offset INTO v_stream_id, v_type, v_next
      FROM event_streaming.lock_stream(p_stream_name, 1::smallint) l;
    IF v_type <> 1 THEN
        RETURN QUERY SELECT 4::smallint, NULL::bigint, NULL::bigint, NULL::uuid, v_type;
        RETURN;
    END IF;

    IF p_expected IS NOT NULL AND p_expected <> v_next - 1 THEN
        -- A retry of a batch that went in still succeeds, whatever came after it.
        SELECT * INTO v_repeat FROM event_streaming.repeated_batch(v_stream_id, p_event_ids);
        IF v_repeat.exact THEN
            RETURN QUERY SELECT 1::smallint, v_repeat.first_offset,
                                v_repeat.first_offset + v_count - 1, NULL::uuid, v_type;
        ELSIF v_repeat.matches > 0 THEN
            RETURN QUERY SELECT 3::smallint, NULL::bigint, NULL::bigint,
                                v_repeat.conflict_event_id, v_type;
        ELSE
            RETURN QUERY SELECT 2::smallint, NULL::bigint, v_next - 1, NULL::uuid, v_type;
        END IF;
        RETURN;
    END IF;

    -- Ids already in the stream are found by the unique index itself (ON CONFLICT),
    -- so the common case costs no lookup: a lookup planned while the table was
    -- young could pick any index starting with stream_id and scan the whole stream.
    -- Taken after the lock: timestamps never go backwards in offset order.
    v_now := clock_timestamp();
    WITH inserted AS (
        INSERT INTO event_streaming.events (
            stream_id, stream_offset, event_id, event_type, content_type, data_json, data_bytes,
            metadata, correlation_id, causation_id, created_at)
        SELECT v_stream_id, v_next + t.ord - 1, t.id, t.event_type, t.content_type, t.data_json,
               t.data_bytes, t.metadata, t.correlation_id, t.causation_id, v_now
          FROM unnest(p_event_ids, p_event_types, p_content_types, p_data_json, p_data_bytes,
                      p_metadata, p_correlation_ids, p_causation_ids)
               WITH ORDINALITY AS t(id, event_type, content_type, data_json, data_bytes,
                                    metadata, correlation_id, causation_id, ord)
        ON CONFLICT (stream_id, event_id) DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO v_inserted FROM inserted;
    IF v_inserted < v_count THEN
        -- Some id was already there: take back what this call wrote (nobody else
        -- can see it yet, and the stream row's lock keeps other appends out), then
        -- tell an exact repeat from a partial one.
        DELETE FROM event_streaming.events
         WHERE stream_id = v_stream_id AND stream_offset >= v_next;
        SELECT * INTO v_repeat FROM event_streaming.repeated_batch(v_stream_id, p_event_ids);
        IF v_repeat.exact THEN
            RETURN QUERY SELECT 1::smallint, v_repeat.first_offset,
                                v_repeat.first_offset + v_count - 1, NULL::uuid, v_type;
        ELSE
            RETURN QUERY SELECT 3::smallint, NULL::bigint, NULL::bigint,
                                v_repeat.conflict_event_id, v_type;
        END IF;
        RETURN;
    END IF;
    UPDATE event_streaming.streams SET next_offset = v_next + v_count WHERE stream_id = v_stream_id;
    RETURN QUERY SELECT 0::smallint, v_next, v_next + v_count - 1, NULL::uuid, v_type;
END
$$;

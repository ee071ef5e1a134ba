-- Ephemeral streams: work queues with leases, delivery attempts and dead letters.
--
-- A message's lease lives in its row (visible_at, delivery_attempts, consumer_id),
-- so a server that dies loses nothing: its leases simply run out. Queue positions
-- (queue_offset) come from streams.next_offset under the stream row's lock, as
-- appends do, so positions are unique and commit in order.
--
-- Dequeue walks the primary key (stream_id, queue_offset) from the head of the
-- queue and stops after max_messages visible rows: its cost follows the leased and
-- delayed rows at the head, never the length of the backlog behind them. None of
-- the columns a dequeue, nack or extend changes is indexed, and the table keeps
-- free space on each page, so those updates are HOT (no new index entries).

CREATE TABLE event_streaming.queue_messages (
    stream_id          bigint      NOT NULL REFERENCES event_streaming.streams ON DELETE CASCADE,
    queue_offset       bigint      NOT NULL,
    event_id           uuid        NOT NULL,
    event_type         text        NOT NULL,
    content_type       text        NOT NULL,
    data_json          jsonb,
    data_bytes         bytea,
    metadata           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    correlation_id     text,
    causation_id       text,
    -- When it was enqueued (kept across redrives).
    created_at         timestamptz NOT NULL,
    -- Visible to Dequeue from this time on: the enqueue time, the end of the
    -- current lease, or the end of a nack's delay.
    visible_at         timestamptz NOT NULL,
    delivery_attempts  integer     NOT NULL DEFAULT 0,
    -- The consumer of the latest delivery, which holds the message until another
    -- delivery or a nack; NULL when never delivered or given back.
    consumer_id        text,
    PRIMARY KEY (stream_id, queue_offset),
    CONSTRAINT queue_messages_one_payload CHECK ((data_json IS NULL) <> (data_bytes IS NULL))
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02);

CREATE UNIQUE INDEX queue_messages_stream_event_id_idx
    ON event_streaming.queue_messages (stream_id, event_id);

CREATE TABLE event_streaming.dead_letters (
    stream_id          bigint      NOT NULL REFERENCES event_streaming.streams ON DELETE CASCADE,
    -- Order of arrival in the dead-letter queue; page tokens point into it.
    dead_letter_id     bigint      GENERATED ALWAYS AS IDENTITY,
    -- The position the message had in the queue.
    queue_offset       bigint      NOT NULL,
    event_id           uuid        NOT NULL,
    event_type         text        NOT NULL,
    content_type       text        NOT NULL,
    data_json          jsonb,
    data_bytes         bytea,
    metadata           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    correlation_id     text,
    causation_id       text,
    created_at         timestamptz NOT NULL,
    delivery_attempts  integer     NOT NULL,
    reason             text        NOT NULL,
    dead_lettered_at   timestamptz NOT NULL,
    PRIMARY KEY (stream_id, dead_letter_id),
    CONSTRAINT dead_letters_one_payload CHECK ((data_json IS NULL) <> (data_bytes IS NULL))
);

CREATE UNIQUE INDEX dead_letters_stream_event_id_idx
    ON event_streaming.dead_letters (stream_id, event_id);

-- Enqueue a batch in one round trip. outcome: 0 enqueued (first_offset = position
-- of the first message), 1 an event id is already in the dead-letter queue
-- (conflict_event_id; nothing written), 2 the stream is not a queue (actual_type
-- says what it is). An id already in the queue raises unique_violation.
--
-- Ids already in the queue are found by the unique index itself, so the common
-- case costs no lookup of its own; the dead-letter queue is searched only when the
-- stream has dead letters, one probe of its unique index per id. Either way the
-- cost follows the batch, never the queue, whatever plan is cached while the
-- tables are young and their statistics say they are empty.
--
-- The dead-letter queue is searched after the insert, not before: calls that
-- dead-letter a message (dequeue, nack, extend, the sweep) do not take the stream
-- row's lock, so one may be moving an id of the batch from the queue to the
-- dead-letter queue meanwhile. The insert of that id waits for it (the unique index
-- holds the row it is deleting), and the search, a statement with a fresh snapshot,
-- then sees its dead letter: the batch is taken out again and refused, rather than
-- the id being left both in the queue and in its dead-letter queue.
--
-- The stream row is locked FOR NO KEY UPDATE (we never change its key): FOR UPDATE
-- would also conflict with the FOR KEY SHARE lock that the foreign-key check of
-- every queue_messages or dead_letters insert takes on it, and a call holding the
-- stream row that waits for a message row held by a dequeue that is dead-lettering
-- it would deadlock with that dequeue's check.
CREATE FUNCTION event_streaming.enqueue_messages(
    p_stream_name     text,
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
    conflict_event_id  uuid,
    actual_type        smallint
) LANGUAGE plpgsql AS $$
DECLARE
    v_stream_id  bigint;
    v_type       smallint;
    v_next       bigint;
    v_id         uuid;
    v_now        timestamptz;
BEGIN
    SELECT l.stream_id, l.stream_type, l.next_offset INTO v_stream_id, v_type, v_next
      FROM event_streaming.lock_stream(p_stream_name, 2::smallint) l;
    IF v_type <> 2 THEN
        RETURN QUERY SELECT 2::smallint, NULL::bigint, NULL::uuid, v_type;
        RETURN;
    END IF;

    -- Taken after the lock: enqueue times never go backwards in queue order. An id
    -- already in the queue fails the insert on the unique index (unique_violation
    -- on queue_messages_stream_event_id_idx), which undoes the whole call.
    v_now := clock_timestamp();
    INSERT INTO event_streaming.queue_messages (
        stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
        metadata, correlation_id, causation_id, created_at, visible_at)
    SELECT v_stream_id, v_next + t.ord - 1, t.id, t.event_type, t.content_type, t.data_json,
           t.data_bytes, t.metadata, t.correlation_id, t.causation_id, v_now, v_now
      FROM unnest(p_event_ids, p_event_types, p_content_types, p_data_json, p_data_bytes,
                  p_metadata, p_correlation_ids, p_causation_ids)
           WITH ORDINALITY AS t(id, event_type, content_type, data_json, data_bytes, metadata,
                                correlation_id, causation_id, ord);

    IF EXISTS (SELECT 1 FROM event_streaming.dead_letters d WHERE d.stream_id = v_stream_id) THEN
        FOREACH v_id IN ARRAY p_event_ids LOOP
            IF EXISTS (SELECT 1 FROM event_streaming.dead_letters d
                        WHERE d.stream_id = v_stream_id AND d.event_id = v_id) THEN
                -- Nothing of the batch stays: its rows are ours alone (not yet
                -- committed) and next_offset has not moved.
                DELETE FROM event_streaming.queue_messages m
                 WHERE m.stream_id = v_stream_id AND m.queue_offset >= v_next
                   AND m.queue_offset < v_next + cardinality(p_event_ids);
                RETURN QUERY SELECT 1::smallint, NULL::bigint, v_id, v_type;
                RETURN;
            END IF;
        END LOOP;
    END IF;

    UPDATE event_streaming.streams SET next_offset = v_next + cardinality(p_event_ids)
     WHERE stream_id = v_stream_id;
    RETURN QUERY SELECT 0::smallint, v_next, NULL::uuid, v_type;
END
$$;

-- Move a queue's messages whose last allowed lease has run out to its dead-letter
-- queue. Dequeue does the same for the messages it meets at the head of the queue;
-- this sweeps the whole queue, for listings and redrives. Returns how many moved.
CREATE FUNCTION event_streaming.bury_expired_messages(p_stream_id bigint, p_max_attempts integer)
RETURNS bigint LANGUAGE sql AS $$
    WITH moved AS (
        DELETE FROM event_streaming.queue_messages m
         WHERE m.stream_id = p_stream_id AND m.visible_at <= now()
           AND m.delivery_attempts >= p_max_attempts
        RETURNING m.*
    ), buried AS (
        INSERT INTO event_streaming.dead_letters (
            stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
            metadata, correlation_id, causation_id, created_at, delivery_attempts, reason,
            dead_lettered_at)
        SELECT stream_id, queue_offset, event_id, event_type, content_type, data_json,
               data_bytes, metadata, correlation_id, causation_id, created_at,
               delivery_attempts, 'visibility timeout expired', now()
          FROM moved ORDER BY queue_offset
        RETURNING 1
    )
    SELECT count(*) FROM buried
$$;

-- Move one message to the dead-letter queue, with the reason given.
CREATE FUNCTION event_streaming.bury_message(p_stream_id bigint, p_offset bigint, p_reason text)
RETURNS void LANGUAGE sql AS $$
    WITH moved AS (
        DELETE FROM event_streaming.queue_messages m
         WHERE m.stream_id = p_stream_id AND m.queue_offset = p_offset
        RETURNING m.*
    )
    INSERT INTO event_streaming.dead_letters (
        stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
        metadata, correlation_id, causation_id, created_at, delivery_attempts, reason,
        dead_lettered_at)
    SELECT stream_id, queue_offset, event_id, event_type, content_type, data_json,
           data_bytes, metadata, correlation_id, causation_id, created_at,
           delivery_attempts, p_reason, now()
      FROM moved
$$;

-- Give a held message back. outcome: 0 visible again after p_delay, 1 moved to the
-- dead-letter queue (it had had its max_delivery_attempts), 2 no such message,
-- 3 not held by p_consumer_id, 4 the stream is not a queue (actual_type).
--
-- A message whose last allowed lease has run out is a dead letter already (Dequeue
-- never hands it out again, GetStreamMetadata counts it as one), whoever asks:
-- it goes to the dead-letter queue as its lease expiry left it, with the reason
-- 'visibility timeout expired', and the answer is 2. Extend does the same.
CREATE FUNCTION event_streaming.nack_message(
    p_stream_name  text,
    p_consumer_id  text,
    p_event_id     uuid,
    p_delay        interval,
    p_reason       text
) RETURNS TABLE (outcome smallint, actual_type smallint) LANGUAGE plpgsql AS $$
DECLARE
    v_stream_id  bigint;
    v_type       smallint;
    v_max        integer;
    v_offset     bigint;
    v_consumer   text;
    v_attempts   integer;
    v_expired    boolean;
BEGIN
    SELECT s.stream_id, s.stream_type, s.max_delivery_attempts INTO v_stream_id, v_type, v_max
      FROM event_streaming.streams s WHERE s.stream_name = p_stream_name;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 2::smallint, NULL::smallint;
        RETURN;
    END IF;
    IF v_type IS DISTINCT FROM 2 AND v_type IS NOT NULL THEN
        RETURN QUERY SELECT 4::smallint, v_type;
        RETURN;
    END IF;
    SELECT m.queue_offset, m.consumer_id, m.delivery_attempts, m.visible_at <= now()
      INTO v_offset, v_consumer, v_attempts, v_expired
      FROM event_streaming.queue_messages m
     WHERE m.stream_id = v_stream_id AND m.event_id = p_event_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 2::smallint, v_type;
        RETURN;
    END IF;
    IF v_attempts >= v_max AND v_expired THEN
        PERFORM event_streaming.bury_message(v_stream_id, v_offset, 'visibility timeout expired');
        RETURN QUERY SELECT 2::smallint, v_type;
        RETURN;
    END IF;
    IF v_consumer IS DISTINCT FROM p_consumer_id THEN
        RETURN QUERY SELECT 3::smallint, v_type;
        RETURN;
    END IF;
    IF v_attempts >= v_max THEN
        PERFORM event_streaming.bury_message(v_stream_id, v_offset, p_reason);
        RETURN QUERY SELECT 1::smallint, v_type;
        RETURN;
    END IF;
    UPDATE event_streaming.queue_messages
       SET consumer_id = NULL, visible_at = now() + p_delay
     WHERE stream_id = v_stream_id AND queue_offset = v_offset;
    RETURN QUERY SELECT 0::smallint, v_type;
END
$$;

-- Extend a held message's lease to now() + p_timeout. outcome: 0 extended
-- (visible_until), 2 no such message (or its last allowed lease has run out: then
-- it is dead-lettered, as in nack_message), 3 not held by p_consumer_id, 4 the
-- stream is not a queue (actual_type).
CREATE FUNCTION event_streaming.extend_visibility(
    p_stream_name  text,
    p_consumer_id  text,
    p_event_id     uuid,
    p_timeout      interval
) RETURNS TABLE (outcome smallint, visible_until timestamptz, actual_type smallint)
LANGUAGE plpgsql AS $$
DECLARE
    v_stream_id  bigint;
    v_type       smallint;
    v_max        integer;
    v_offset     bigint;
    v_consumer   text;
    v_attempts   integer;
    v_expired    boolean;
    v_until      timestamptz;
BEGIN
    SELECT s.stream_id, s.stream_type, s.max_delivery_attempts INTO v_stream_id, v_type, v_max
      FROM event_streaming.streams s WHERE s.stream_name = p_stream_name;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 2::smallint, NULL::timestamptz, NULL::smallint;
        RETURN;
    END IF;
    IF v_type IS DISTINCT FROM 2 AND v_type IS NOT NULL THEN
        RETURN QUERY SELECT 4::smallint, NULL::timestamptz, v_type;
        RETURN;
    END IF;
    SELECT m.queue_offset, m.consumer_id, m.delivery_attempts, m.visible_at <= now()
      INTO v_offset, v_consumer, v_attempts, v_expired
      FROM event_streaming.queue_messages m
     WHERE m.stream_id = v_stream_id AND m.event_id = p_event_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 2::smallint, NULL::timestamptz, v_type;
        RETURN;
    END IF;
    IF v_attempts >= v_max AND v_expired THEN
        PERFORM event_streaming.bury_message(v_stream_id, v_offset, 'visibility timeout expired');
        RETURN QUERY SELECT 2::smallint, NULL::timestamptz, v_type;
        RETURN;
    END IF;
    IF v_consumer IS DISTINCT FROM p_consumer_id THEN
        RETURN QUERY SELECT 3::smallint, NULL::timestamptz, v_type;
        RETURN;
    END IF;
    UPDATE event_streaming.queue_messages SET visible_at = now() + p_timeout
     WHERE stream_id = v_stream_id AND queue_offset = v_offset
    RETURNING visible_at INTO v_until;
    RETURN QUERY SELECT 0::smallint, v_until, v_type;
END
$$;

-- Put dead letters (p_event_ids, or all when NULL) back at the end of the queue
-- with their attempts reset, oldest dead letter first. Expired messages that
-- reached their last attempt are dead-lettered first, so "all" includes them.
-- Returns the count moved, or -1 with actual_type when the stream is not a queue.
-- A dead letter whose id is in the queue again (which enqueue_messages prevents,
-- but a database written by an earlier build may hold) stays where it is and is
-- not counted, rather than failing the whole call on the unique index; it can be
-- redriven once that message is gone. Under the stream row's lock nothing else
-- puts messages in the queue, so the check holds until the insert.
CREATE FUNCTION event_streaming.redrive_dead_letters(p_stream_name text, p_event_ids uuid[])
RETURNS TABLE (redriven bigint, actual_type smallint) LANGUAGE plpgsql AS $$
DECLARE
    v_stream_id  bigint;
    v_type       smallint;
    v_max        integer;
    v_next       bigint;
    v_count      bigint;
BEGIN
    SELECT s.stream_id, s.stream_type, s.max_delivery_attempts, s.next_offset
      INTO v_stream_id, v_type, v_max, v_next
      FROM event_streaming.streams s WHERE s.stream_name = p_stream_name FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, NULL::smallint;
        RETURN;
    END IF;
    IF v_type IS DISTINCT FROM 2 AND v_type IS NOT NULL THEN
        RETURN QUERY SELECT -1::bigint, v_type;
        RETURN;
    END IF;
    PERFORM event_streaming.bury_expired_messages(v_stream_id, v_max);
    WITH moved AS (
        DELETE FROM event_streaming.dead_letters d
         WHERE d.stream_id = v_stream_id
           AND (p_event_ids IS NULL OR d.event_id = ANY ((SELECT p_event_ids)::uuid[]))
           AND NOT EXISTS (SELECT 1 FROM event_streaming.queue_messages m
                            WHERE m.stream_id = d.stream_id AND m.event_id = d.event_id)
        RETURNING d.*
    )
    INSERT INTO event_streaming.queue_messages (
        stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
        metadata, correlation_id, causation_id, created_at, visible_at)
    SELECT stream_id, v_next + row_number() OVER (ORDER BY dead_letter_id) - 1, event_id,
           event_type, content_type, data_json, data_bytes, metadata, correlation_id,
           causation_id, created_at, now()
      FROM moved;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE event_streaming.streams SET next_offset = v_next + v_count
         WHERE stream_id = v_stream_id;
    END IF;
    RETURN QUERY SELECT v_count, v_type;
END
$$;

-- Writes that leave no trace when refused, SQL written once, named outcomes, and
-- payload sizes for byte-bounded pages.
--
-- * A refused call changes nothing: appends and enqueues no longer create a
--   stream, or give a typeless stream its type, before they know they succeed.
--   The row of a new stream is made only on the way to a write, and the type is
--   set together with the write itself.
-- * A stream row is found, or made, in a loop, so a DeleteStream committing
--   between the steps never leaves a call without its row.
-- * Outcomes are text, the same strings as the Python enums that read them
--   (storage/postgres/log.py and queue.py), instead of positional numbers.
-- * One function moves messages to the dead-letter queue (bury_messages); the
--   reasons recorded come from the caller (storage/rules.py), never from SQL.
-- * payload_bytes: what a row adds to a response (data plus metadata, as
--   storage.records.payload_size counts it), so a read stops at a byte budget
--   without loading the rows it leaves out. NULL for rows written before this
--   migration; readers then fall back on the stored size.

ALTER TABLE event_streaming.events ADD COLUMN payload_bytes integer;
ALTER TABLE event_streaming.queue_messages ADD COLUMN payload_bytes integer;
ALTER TABLE event_streaming.dead_letters ADD COLUMN payload_bytes integer;

DROP FUNCTION event_streaming.append_events(
    text, bigint, uuid[], text[], text[], jsonb[], bytea[], jsonb[], text[], text[]);
DROP FUNCTION event_streaming.enqueue_messages(
    text, uuid[], text[], text[], jsonb[], bytea[], jsonb[], text[], text[]);
DROP FUNCTION event_streaming.nack_message(text, text, uuid, interval, text);
DROP FUNCTION event_streaming.extend_visibility(text, text, uuid, interval);
DROP FUNCTION event_streaming.redrive_dead_letters(text, uuid[]);
DROP FUNCTION event_streaming.bury_expired_messages(bigint, integer);
DROP FUNCTION event_streaming.bury_message(bigint, bigint, text);
DROP FUNCTION event_streaming.lock_stream(text, smallint);

-- The row of a stream about to be written, locked FOR NO KEY UPDATE until commit
-- (see 001), made (typed p_type) when missing. Loops because a concurrent
-- DeleteStream may remove the row between the failed insert and the select.
-- A row made here is the caller's alone until commit: the caller only asks for
-- it once it knows the write will go in.
CREATE FUNCTION event_streaming.create_stream(
    p_stream_name    text,
    p_type           smallint,
    OUT stream_id    bigint,
    OUT stream_type  smallint,
    OUT next_offset  bigint
) LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        SELECT s.stream_id, s.stream_type, s.next_offset INTO stream_id, stream_type, next_offset
          FROM event_streaming.streams s WHERE s.stream_name = p_stream_name FOR NO KEY UPDATE;
        IF FOUND THEN
            RETURN;
        END IF;
        INSERT INTO event_streaming.streams AS s (stream_name, stream_type)
        VALUES (p_stream_name, p_type) ON CONFLICT (stream_name) DO NOTHING
        RETURNING s.stream_id, s.stream_type, s.next_offset INTO stream_id, stream_type, next_offset;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- Append a batch in one round trip. outcome:
--   'appended'      first_offset .. last_offset written
--   'repeat'        an exact repeat of an earlier batch: nothing written, its offsets
--   'wrong_offset'  the expectation failed; last_offset is the actual last offset
--   'duplicate'     some ids (conflict_event_id the first) are already in the stream
--   'wrong_type'    the stream is not a log (actual_type)
-- Only 'appended' changes anything.
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
    p_causation_ids   text[],
    p_payload_bytes   integer[]
) RETURNS TABLE (
    outcome            text,
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
    SELECT s.stream_id, s.stream_type, s.next_offset INTO v_stream_id, v_type, v_next
      FROM event_streaming.streams s WHERE s.stream_name = p_stream_name FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        IF p_expected IS NOT NULL AND p_expected <> -1 THEN
            -- No stream, so no last offset: refused, and the stream stays unmade.
            RETURN QUERY SELECT 'wrong_offset'::text, NULL::bigint, -1::bigint, NULL::uuid,
                                NULL::smallint;
            RETURN;
        END IF;
        SELECT c.stream_id, c.stream_type, c.next_offset INTO v_stream_id, v_type, v_next
          FROM event_streaming.create_stream(p_stream_name, 1::smallint) c;
    END IF;
    IF v_type IS DISTINCT FROM 1 AND v_type IS NOT NULL THEN
        RETURN QUERY SELECT 'wrong_type'::text, NULL::bigint, NULL::bigint, NULL::uuid, v_type;
        RETURN;
    END IF;

    IF p_expected IS NOT NULL AND p_expected <> v_next - 1 THEN
        -- A retry of a batch that went in still succeeds, whatever came after it.
        SELECT * INTO v_repeat FROM event_streaming.repeated_batch(v_stream_id, p_event_ids);
        IF v_repeat.exact THEN
            RETURN QUERY SELECT 'repeat'::text, v_repeat.first_offset,
                                v_repeat.first_offset + v_count - 1, NULL::uuid, v_type;
        ELSIF v_repeat.matches > 0 THEN
            RETURN QUERY SELECT 'duplicate'::text, NULL::bigint, NULL::bigint,
                                v_repeat.conflict_event_id, v_type;
        ELSE
            RETURN QUERY SELECT 'wrong_offset'::text, NULL::bigint, v_next - 1, NULL::uuid, v_type;
        END IF;
        RETURN;
    END IF;

    -- Ids already in the stream are found by the unique index itself (ON CONFLICT),
    -- so the common case costs no lookup (see 001). Taken after the lock:
    -- timestamps never go backwards in offset order.
    v_now := clock_timestamp();
    WITH inserted AS (
        INSERT INTO event_streaming.events (
            stream_id, stream_offset, event_id, event_type, content_type, data_json, data_bytes,
            metadata, correlation_id, causation_id, created_at, payload_bytes)
        SELECT v_stream_id, v_next + t.ord - 1, t.id, t.event_type, t.content_type, t.data_json,
               t.data_bytes, t.metadata, t.correlation_id, t.causation_id, v_now, t.payload_bytes
          FROM unnest(p_event_ids, p_event_types, p_content_types, p_data_json, p_data_bytes,
                      p_metadata, p_correlation_ids, p_causation_ids, p_payload_bytes)
               WITH ORDINALITY AS t(id, event_type, content_type, data_json, data_bytes,
                                    metadata, correlation_id, causation_id, payload_bytes, ord)
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
            RETURN QUERY SELECT 'repeat'::text, v_repeat.first_offset,
                                v_repeat.first_offset + v_count - 1, NULL::uuid, v_type;
        ELSE
            RETURN QUERY SELECT 'duplicate'::text, NULL::bigint, NULL::bigint,
                                v_repeat.conflict_event_id, v_type;
        END IF;
        RETURN;
    END IF;
    -- The write and the stream's type (when it had none yet) go together.
    UPDATE event_streaming.streams SET next_offset = v_next + v_count, stream_type = 1
     WHERE stream_id = v_stream_id;
    RETURN QUERY SELECT 'appended'::text, v_next, v_next + v_count - 1, NULL::uuid, v_type;
END
$$;

-- Move the messages at p_offsets of a queue to its dead-letter queue, in queue
-- order, with p_reason; returns how many moved. The one place messages are
-- dead-lettered: by a dequeue that meets them at the head, a nack of the last
-- allowed attempt, a nack or extend that finds the last lease run out, and the
-- sweep before listings and redrives.
CREATE FUNCTION event_streaming.bury_messages(
    p_stream_id  bigint,
    p_offsets    bigint[],
    p_reason     text
) RETURNS bigint LANGUAGE sql AS $$
    WITH moved AS (
        DELETE FROM event_streaming.queue_messages m
         WHERE m.stream_id = p_stream_id AND m.queue_offset = ANY (p_offsets)
        RETURNING m.*
    ), buried AS (
        INSERT INTO event_streaming.dead_letters (
            stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
            metadata, correlation_id, causation_id, created_at, delivery_attempts, reason,
            dead_lettered_at, payload_bytes)
        SELECT stream_id, queue_offset, event_id, event_type, content_type, data_json,
               data_bytes, metadata, correlation_id, causation_id, created_at,
               delivery_attempts, p_reason, now(), payload_bytes
          FROM moved ORDER BY queue_offset
        RETURNING 1
    )
    SELECT count(*) FROM buried
$$;

-- Dead-letter every message of a queue whose last allowed lease has run out
-- (Dequeue never hands them out again). Returns how many moved. Such a message
-- never becomes anything else but gone: a call that meanwhile deletes or buries
-- one is waited for by the move, which then skips it.
CREATE FUNCTION event_streaming.bury_expired_messages(
    p_stream_id     bigint,
    p_max_attempts  integer,
    p_reason        text
) RETURNS bigint LANGUAGE sql AS $$
    SELECT event_streaming.bury_messages(p_stream_id, ARRAY(
        SELECT m.queue_offset FROM event_streaming.queue_messages m
         WHERE m.stream_id = p_stream_id AND m.visible_at <= now()
           AND m.delivery_attempts >= p_max_attempts), p_reason)
$$;

-- Enqueue a batch in one round trip. outcome:
--   'enqueued'    first_offset is the position of the first message
--   'duplicate'   an id (conflict_event_id) is in the queue or its dead-letter
--                 queue: nothing written
--   'wrong_type'  the stream is not a queue (actual_type)
-- Ids in the queue are found by its unique index (ON CONFLICT), so the cost
-- follows the batch, whatever plan is cached. The dead-letter queue is searched
-- after the insert (see 002): a call moving an id of the batch to it meanwhile is
-- waited for by the insert, and then seen by the search.
CREATE FUNCTION event_streaming.enqueue_messages(
    p_stream_name     text,
    p_event_ids       uuid[],
    p_event_types     text[],
    p_content_types   text[],
    p_data_json       jsonb[],
    p_data_bytes      bytea[],
    p_metadata        jsonb[],
    p_correlation_ids text[],
    p_causation_ids   text[],
    p_payload_bytes   integer[]
) RETURNS TABLE (
    outcome            text,
    first_offset       bigint,
    conflict_event_id  uuid,
    actual_type        smallint
) LANGUAGE plpgsql AS $$
DECLARE
    v_stream_id  bigint;
    v_type       smallint;
    v_next       bigint;
    v_count      integer := cardinality(p_event_ids);
    v_inserted   uuid[];
    v_conflict   uuid;
    v_now        timestamptz;
BEGIN
    -- Made here when missing: a new queue has no message or dead letter an id
    -- could collide with, so an enqueue that makes the stream always succeeds.
    SELECT c.stream_id, c.stream_type, c.next_offset INTO v_stream_id, v_type, v_next
      FROM event_streaming.create_stream(p_stream_name, 2::smallint) c;
    IF v_type IS DISTINCT FROM 2 AND v_type IS NOT NULL THEN
        RETURN QUERY SELECT 'wrong_type'::text, NULL::bigint, NULL::uuid, v_type;
        RETURN;
    END IF;

    -- Taken after the lock: enqueue times never go backwards in queue order.
    v_now := clock_timestamp();
    WITH inserted AS (
        INSERT INTO event_streaming.queue_messages (
            stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
            metadata, correlation_id, causation_id, created_at, visible_at, payload_bytes)
        SELECT v_stream_id, v_next + t.ord - 1, t.id, t.event_type, t.content_type, t.data_json,
               t.data_bytes, t.metadata, t.correlation_id, t.causation_id, v_now, v_now,
               t.payload_bytes
          FROM unnest(p_event_ids, p_event_types, p_content_types, p_data_json, p_data_bytes,
                      p_metadata, p_correlation_ids, p_causation_ids, p_payload_bytes)
               WITH ORDINALITY AS t(id, event_type, content_type, data_json, data_bytes, metadata,
                                    correlation_id, causation_id, payload_bytes, ord)
        ON CONFLICT (stream_id, event_id) DO NOTHING
        RETURNING event_id
    )
    SELECT array_agg(event_id) INTO v_inserted FROM inserted;

    IF coalesce(cardinality(v_inserted), 0) < v_count THEN
        SELECT b.id INTO v_conflict FROM unnest(p_event_ids) WITH ORDINALITY AS b(id, ord)
         WHERE b.id <> ALL (coalesce(v_inserted, '{}')) ORDER BY b.ord LIMIT 1;
    ELSIF EXISTS (SELECT 1 FROM event_streaming.dead_letters d WHERE d.stream_id = v_stream_id) THEN
        SELECT b.id INTO v_conflict FROM unnest(p_event_ids) WITH ORDINALITY AS b(id, ord)
         WHERE EXISTS (SELECT 1 FROM event_streaming.dead_letters d
                        WHERE d.stream_id = v_stream_id AND d.event_id = b.id)
         ORDER BY b.ord LIMIT 1;
    END IF;
    IF v_conflict IS NOT NULL THEN
        -- Nothing of the batch stays: its rows are ours alone (not yet committed)
        -- and next_offset has not moved. (A stream this call made has neither
        -- messages nor dead letters, so it never gets here.)
        DELETE FROM event_streaming.queue_messages m
         WHERE m.stream_id = v_stream_id AND m.queue_offset >= v_next
           AND m.queue_offset < v_next + v_count;
        RETURN QUERY SELECT 'duplicate'::text, NULL::bigint, v_conflict, v_type;
        RETURN;
    END IF;

    UPDATE event_streaming.streams SET next_offset = v_next + v_count, stream_type = 2
     WHERE stream_id = v_stream_id;
    RETURN QUERY SELECT 'enqueued'::text, v_next, NULL::uuid, v_type;
END
$$;

-- The message p_event_id of queue p_stream_name, locked, when p_consumer_id holds
-- it. outcome: 'held' (stream_id, queue_offset, delivery_attempts, max_attempts
-- set), 'not_found', 'not_held', or 'wrong_type' (actual_type). A message whose
-- last allowed lease has run out is a dead letter already (Dequeue never hands it
-- out again, GetStreamMetadata counts it as one), whoever asks: it goes to the
-- dead-letter queue as its expiry left it, with p_expired_reason, and the answer
-- is 'not_found'. Shared by nack_message and extend_visibility.
CREATE FUNCTION event_streaming.held_message(
    p_stream_name        text,
    p_consumer_id        text,
    p_event_id           uuid,
    p_expired_reason     text,
    OUT outcome          text,
    OUT stream_id        bigint,
    OUT queue_offset     bigint,
    OUT delivery_attempts integer,
    OUT max_attempts     integer,
    OUT actual_type      smallint
) LANGUAGE plpgsql AS $$
DECLARE
    v_consumer  text;
    v_expired   boolean;
BEGIN
    SELECT s.stream_id, s.stream_type, s.max_delivery_attempts
      INTO stream_id, actual_type, max_attempts
      FROM event_streaming.streams s WHERE s.stream_name = p_stream_name;
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN;
    END IF;
    IF actual_type IS DISTINCT FROM 2 AND actual_type IS NOT NULL THEN
        outcome := 'wrong_type';
        RETURN;
    END IF;
    SELECT m.queue_offset, m.consumer_id, m.delivery_attempts, m.visible_at <= now()
      INTO queue_offset, v_consumer, delivery_attempts, v_expired
      FROM event_streaming.queue_messages m
     WHERE m.stream_id = held_message.stream_id AND m.event_id = p_event_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'not_found';
    ELSIF delivery_attempts >= max_attempts AND v_expired THEN
        PERFORM event_streaming.bury_messages(stream_id, ARRAY[queue_offset], p_expired_reason);
        outcome := 'not_found';
    ELSIF v_consumer IS DISTINCT FROM p_consumer_id THEN
        outcome := 'not_held';
    ELSE
        outcome := 'held';
    END IF;
END
$$;

-- Give a held message back. outcome: 'released' (visible again after p_delay),
-- 'dead_lettered' (it had had its last allowed delivery: moved with p_reason), or
-- what held_message answered ('not_found', 'not_held', 'wrong_type').
CREATE FUNCTION event_streaming.nack_message(
    p_stream_name     text,
    p_consumer_id     text,
    p_event_id        uuid,
    p_delay           interval,
    p_reason          text,
    p_expired_reason  text
) RETURNS TABLE (outcome text, actual_type smallint) LANGUAGE plpgsql AS $$
DECLARE
    h  record;
BEGIN
    SELECT * INTO h
      FROM event_streaming.held_message(p_stream_name, p_consumer_id, p_event_id, p_expired_reason);
    IF h.outcome <> 'held' THEN
        RETURN QUERY SELECT h.outcome, h.actual_type;
    ELSIF h.delivery_attempts >= h.max_attempts THEN
        PERFORM event_streaming.bury_messages(h.stream_id, ARRAY[h.queue_offset], p_reason);
        RETURN QUERY SELECT 'dead_lettered'::text, h.actual_type;
    ELSE
        UPDATE event_streaming.queue_messages
           SET consumer_id = NULL, visible_at = now() + p_delay
         WHERE stream_id = h.stream_id AND queue_offset = h.queue_offset;
        RETURN QUERY SELECT 'released'::text, h.actual_type;
    END IF;
END
$$;

-- Extend a held message's lease to now() + p_timeout. outcome: 'extended'
-- (visible_until), or what held_message answered.
CREATE FUNCTION event_streaming.extend_visibility(
    p_stream_name     text,
    p_consumer_id     text,
    p_event_id        uuid,
    p_timeout         interval,
    p_expired_reason  text
) RETURNS TABLE (outcome text, visible_until timestamptz, actual_type smallint)
LANGUAGE plpgsql AS $$
DECLARE
    h        record;
    v_until  timestamptz;
BEGIN
    SELECT * INTO h
      FROM event_streaming.held_message(p_stream_name, p_consumer_id, p_event_id, p_expired_reason);
    IF h.outcome <> 'held' THEN
        RETURN QUERY SELECT h.outcome, NULL::timestamptz, h.actual_type;
        RETURN;
    END IF;
    UPDATE event_streaming.queue_messages SET visible_at = now() + p_timeout
     WHERE stream_id = h.stream_id AND queue_offset = h.queue_offset
    RETURNING visible_at INTO v_until;
    RETURN QUERY SELECT 'extended'::text, v_until, h.actual_type;
END
$$;

-- Put dead letters (p_event_ids, or all when NULL) back at the end of the queue
-- with their attempts reset, oldest dead letter first. Expired messages that
-- reached their last attempt are dead-lettered first (with p_expired_reason), so
-- "all" includes them. outcome: 'redriven' (redriven = how many), 'not_found'
-- (no such stream), 'wrong_type' (actual_type). A dead letter whose id is in the
-- queue again (which enqueue_messages prevents, but a database written by an
-- earlier build may hold) stays where it is and is not counted.
CREATE FUNCTION event_streaming.redrive_dead_letters(
    p_stream_name     text,
    p_event_ids       uuid[],
    p_expired_reason  text
) RETURNS TABLE (outcome text, redriven bigint, actual_type smallint) LANGUAGE plpgsql AS $$
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
        RETURN QUERY SELECT 'not_found'::text, 0::bigint, NULL::smallint;
        RETURN;
    END IF;
    IF v_type IS DISTINCT FROM 2 AND v_type IS NOT NULL THEN
        RETURN QUERY SELECT 'wrong_type'::text, 0::bigint, v_type;
        RETURN;
    END IF;
    PERFORM event_streaming.bury_expired_messages(v_stream_id, v_max, p_expired_reason);
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
        metadata, correlation_id, causation_id, created_at, visible_at, payload_bytes)
    SELECT stream_id, v_next + row_number() OVER (ORDER BY dead_letter_id) - 1, event_id,
           event_type, content_type, data_json, data_bytes, metadata, correlation_id,
           causation_id, created_at, now(), payload_bytes
      FROM moved;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE event_streaming.streams SET next_offset = v_next + v_count
         WHERE stream_id = v_stream_id;
    END IF;
    RETURN QUERY SELECT 'redriven'::text, v_count, v_type;
END
$$;

-- Queues: delayed delivery, retry backoff, ordering keys, deduplication, receipts,
-- and a dequeue whose cost stays flat under churn.
--
-- Where a message stands is now one column, state, and the dequeue reads it
-- through two partial indexes, so it never walks rows it cannot deliver:
--
--   0 ready    never delivered and visible since its enqueue (or redrive).
--              queue_messages_ready_idx, in queue order. Rows enter only at the
--              end of the queue (new positions) and leave when first leased, so
--              the index is a FIFO: the server keeps, per queue, the position
--              below which no ready row is left (a low-water mark) and starts
--              its walk there, never over the dead or leased rows at the head.
--   1 timed    deliverable from visible_at on: leased (visible_at = the lease's
--              end plus the retry delay), delayed, nacked, or the next message
--              of an ordering key whose previous one left the queue.
--              queue_messages_timed_idx, by visible_at: the dequeue takes the
--              due ones (visible_at <= now()) from its start.
--   2 parked   behind an earlier message of its ordering key; in neither index
--              and never looked at, however many a busy key holds.
--
-- lease_until is the end of the latest delivery's lease (NULL when the message
-- was never delivered or was given back); delivery_id names that delivery
-- (receipts). A message is in flight while lease_until > now().
--
-- Ordering keys. Only a key's oldest message is ever deliverable (ready or
-- timed); when it leaves the queue (acknowledged or dead-lettered) the next one
-- of its key becomes timed (release_keys). A nacked or expired message keeps its
-- key until it is gone, so its successors wait for its redelivery.
--
-- An enqueue decides that a keyed message is parked by finding an earlier one of
-- its key; a call that removes a key's message then looks for the key's next one.
-- The two must not miss each other (the enqueue seeing the old message still
-- there, the removal not yet seeing the new one), so each key has a lock
-- (lock_keys: a transaction-level advisory lock on a hash of the queue and the
-- key, 1,024 per queue): an enqueue holds its keys' locks exclusively from before
-- it looks until it commits; a removal takes them shared after deleting and only
-- then, in a statement of its own (so with a snapshot that sees what the enqueue
-- committed), looks for the next message. Removals do not wait for each other;
-- enqueues of a queue are serialised by its stream row anyway. No deadlock: an
-- enqueue waits for nothing else once it holds key locks, and a removal takes
-- them (in one order) after every row lock it needs.
--
-- Deduplication. queue_remembered_ids holds, per queue, the ids enqueued within
-- the stream's deduplication_window (forget_at = enqueue time + window), whatever
-- became of their messages; an id in the queue or its dead-letter queue is a
-- duplicate whatever its age. The retention task deletes the rows whose time
-- has passed, in bounded batches (forget_at index). No foreign key: rows of a
-- deleted stream are unreachable (a new stream gets a new stream_id) and go the
-- same way, and each enqueued id costs no foreign-key check.
--
-- Vacuum. A work queue deletes or replaces nearly every row it inserts, so its
-- tables are vacuumed after a fixed number of dead rows, however large they are,
-- and without the cost-based pauses that would let a busy queue outrun vacuum.

ALTER TABLE event_streaming.streams
    ADD COLUMN retry_initial_delay   interval         NOT NULL DEFAULT interval '0',
    ADD COLUMN retry_max_delay       interval         NOT NULL DEFAULT interval '0',
    ADD COLUMN retry_multiplier      double precision NOT NULL DEFAULT 2.0
        CHECK (retry_multiplier >= 1),
    ADD COLUMN deduplication_window  interval         NOT NULL DEFAULT interval '5 minutes';

ALTER TABLE event_streaming.queue_messages
    ADD COLUMN ordering_key  text,
    ADD COLUMN delivery_id   uuid,
    ADD COLUMN lease_until   timestamptz,
    ADD COLUMN state         smallint NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2));

ALTER TABLE event_streaming.dead_letters ADD COLUMN ordering_key text;

-- Messages written before this migration: held ones keep their lease; all but
-- the never-delivered visible ones go by their visible_at.
UPDATE event_streaming.queue_messages
   SET lease_until = CASE WHEN consumer_id IS NOT NULL THEN visible_at END,
       state = CASE WHEN consumer_id IS NULL AND delivery_attempts = 0
                         AND visible_at <= now() THEN 0 ELSE 1 END;

CREATE INDEX queue_messages_ready_idx
    ON event_streaming.queue_messages (stream_id, queue_offset) WHERE state = 0;
CREATE INDEX queue_messages_timed_idx
    ON event_streaming.queue_messages (stream_id, visible_at) WHERE state = 1;
CREATE INDEX queue_messages_key_idx
    ON event_streaming.queue_messages (stream_id, ordering_key, queue_offset)
 WHERE ordering_key IS NOT NULL;

ALTER TABLE event_streaming.queue_messages SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);
ALTER TABLE event_streaming.dead_letters SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

CREATE TABLE event_streaming.queue_remembered_ids (
    stream_id  bigint      NOT NULL,
    event_id   uuid        NOT NULL,
    forget_at  timestamptz NOT NULL,
    PRIMARY KEY (stream_id, event_id)
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
CREATE INDEX queue_remembered_ids_forget_idx
    ON event_streaming.queue_remembered_ids (forget_at);

DROP FUNCTION event_streaming.enqueue_messages(
    text, uuid[], text[], text[], jsonb[], bytea[], jsonb[], text[], text[], integer[]);
DROP FUNCTION event_streaming.nack_message(text, text, uuid, interval, text, text);
DROP FUNCTION event_streaming.extend_visibility(text, text, uuid, interval, text);
DROP FUNCTION event_streaming.held_message(text, text, uuid, text);
DROP FUNCTION event_streaming.redrive_dead_letters(text, uuid[], text);
DROP FUNCTION event_streaming.bury_expired_messages(bigint, integer, text);
DROP FUNCTION event_streaming.bury_messages(bigint, bigint[], text);

-- How long a message waits before its next delivery once delivery p_attempt
-- failed (lease ran out, or a nack without a delay):
-- min(max, initial * multiplier^(attempt-1)), +-10% at random; 0 without an
-- initial delay. The same rule as storage.rules.retry_delay, in log space so no
-- attempt count overflows.
CREATE FUNCTION event_streaming.retry_delay(
    p_initial     interval,
    p_max         interval,
    p_multiplier  double precision,
    p_attempt     integer
) RETURNS interval LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN p_initial <= interval '0' THEN interval '0' ELSE
        make_interval(secs => i * exp(least((p_attempt - 1) * ln(p_multiplier),
                                            ln(greatest(m, i) / i)))
                               * (0.9 + 0.2 * random()))
    END
      FROM (SELECT extract(epoch FROM p_initial)::double precision AS i,
                   extract(epoch FROM p_max)::double precision AS m) e
$$;

-- Lock the ordering keys p_keys of a queue until commit (see the top of this
-- file), in one order, exclusively or shared.
CREATE FUNCTION event_streaming.lock_keys(
    p_stream_id  bigint,
    p_keys       text[],
    p_exclusive  boolean
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_bucket  integer;
BEGIN
    FOR v_bucket IN
        SELECT DISTINCT hashtext(u.k) & 1023 FROM unnest(p_keys) AS u(k)
         WHERE u.k IS NOT NULL ORDER BY 1
    LOOP
        IF p_exclusive THEN
            PERFORM pg_advisory_xact_lock(hashint8(p_stream_id), v_bucket);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(hashint8(p_stream_id), v_bucket);
        END IF;
    END LOOP;
END
$$;

-- The next message of each ordering key in p_keys after position p_offsets (the
-- message of that key that just left the queue) becomes deliverable, from its
-- visible_at or now, whichever is later. Called after the statement that removed
-- those messages; takes the keys' locks first. Returns how many.
CREATE FUNCTION event_streaming.release_keys(
    p_stream_id  bigint,
    p_keys       text[],
    p_offsets    bigint[]
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_released  integer;
BEGIN
    PERFORM event_streaming.lock_keys(p_stream_id, p_keys, false);
    WITH following AS (
        SELECT n.ctid
          FROM unnest(p_keys, p_offsets) AS k(ordering_key, after_offset)
         CROSS JOIN LATERAL (
               SELECT m.ctid, m.state FROM event_streaming.queue_messages m
                WHERE m.stream_id = p_stream_id AND m.ordering_key = k.ordering_key
                  AND m.queue_offset > k.after_offset
                ORDER BY m.queue_offset LIMIT 1) n
         WHERE k.ordering_key IS NOT NULL AND n.state = 2
    ), released AS (
        UPDATE event_streaming.queue_messages m
           SET state = 1, visible_at = greatest(m.visible_at, now())
         WHERE m.ctid = ANY (ARRAY(SELECT ctid FROM following)) AND m.state = 2
        RETURNING 1
    )
    SELECT count(*)::integer INTO v_released FROM released;
    RETURN v_released;
END
$$;

-- Which of the ordering keys p_keys already have a message in the queue. Takes
-- the keys' locks (exclusively, until commit) before it looks.
CREATE FUNCTION event_streaming.busy_keys(p_stream_id bigint, p_keys text[])
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_busy  text[];
BEGIN
    PERFORM event_streaming.lock_keys(p_stream_id, p_keys, true);
    SELECT coalesce(array_agg(k.ordering_key), '{}') INTO v_busy
      FROM (SELECT DISTINCT ordering_key FROM unnest(p_keys) AS u(ordering_key)
             WHERE ordering_key IS NOT NULL) k
     WHERE EXISTS (SELECT 1 FROM event_streaming.queue_messages m
                    WHERE m.stream_id = p_stream_id AND m.ordering_key = k.ordering_key);
    RETURN v_busy;
END
$$;

-- Move the messages at p_offsets of a queue to its dead-letter queue, in queue
-- order, with p_reason, and release their ordering keys; returns how many moved.
-- The one place messages are dead-lettered.
CREATE FUNCTION event_streaming.bury_messages(
    p_stream_id  bigint,
    p_offsets    bigint[],
    p_reason     text
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_moved    bigint;
    v_keys     text[];
    v_offsets  bigint[];
BEGIN
    IF cardinality(p_offsets) = 0 THEN
        RETURN 0;
    END IF;
    WITH moved AS (
        DELETE FROM event_streaming.queue_messages m
         WHERE m.stream_id = p_stream_id AND m.queue_offset = ANY (p_offsets)
        RETURNING m.*
    ), buried AS (
        INSERT INTO event_streaming.dead_letters (
            stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
            metadata, correlation_id, causation_id, created_at, delivery_attempts, reason,
            dead_lettered_at, payload_bytes, ordering_key)
        SELECT stream_id, queue_offset, event_id, event_type, content_type, data_json,
               data_bytes, metadata, correlation_id, causation_id, created_at,
               delivery_attempts, p_reason, now(), payload_bytes, ordering_key
          FROM moved ORDER BY queue_offset
        RETURNING ordering_key, queue_offset
    )
    SELECT count(*), array_agg(ordering_key) FILTER (WHERE ordering_key IS NOT NULL),
           array_agg(queue_offset) FILTER (WHERE ordering_key IS NOT NULL)
      INTO v_moved, v_keys, v_offsets
      FROM buried;
    IF v_keys IS NOT NULL THEN
        PERFORM event_streaming.release_keys(p_stream_id, v_keys, v_offsets);
    END IF;
    RETURN v_moved;
END
$$;

-- Dead-letter every message of a queue that is due for another delivery with
-- none left (its last allowed lease ran out). Returns how many moved.
CREATE FUNCTION event_streaming.bury_expired_messages(
    p_stream_id     bigint,
    p_max_attempts  integer,
    p_reason        text
) RETURNS bigint LANGUAGE sql AS $$
    SELECT event_streaming.bury_messages(p_stream_id, ARRAY(
        SELECT m.queue_offset FROM event_streaming.queue_messages m
         WHERE m.stream_id = p_stream_id AND m.state = 1 AND m.visible_at <= now()
           AND m.delivery_attempts >= p_max_attempts), p_reason)
$$;

-- Enqueue a batch in one round trip, invisible until p_deliver_at when given.
-- outcome:
--   'enqueued'    the messages not listed in duplicate_event_ids were written,
--                 the first at first_offset (positions are dense)
--   'wrong_type'  the stream is not a queue (actual_type); nothing written
-- A duplicate is an id remembered within the window, or still in the queue or
-- its dead-letter queue. The remembered ids are claimed first (one insert that
-- reports which were new or forgotten); ids in the queue are found by its unique
-- index, and the dead-letter queue is searched after the insert, as in 004 (a
-- call moving an id of the batch there meanwhile is waited for by the insert,
-- then seen by the search). When either finds one, the batch is written again
-- without it, so positions stay dense.
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
    p_payload_bytes   integer[],
    p_ordering_keys   text[],
    p_deliver_at      timestamptz
) RETURNS TABLE (
    outcome              text,
    first_offset         bigint,
    duplicate_event_ids  uuid[],
    actual_type          smallint
) LANGUAGE plpgsql AS $$
DECLARE
    v_stream_id  bigint;
    v_type       smallint;
    v_next       bigint;
    v_window     interval;
    v_now        timestamptz;
    v_visible    timestamptz;
    v_fresh      uuid[];
    v_written    uuid[];
    v_dead       uuid[];
    v_busy       text[] := '{}';
BEGIN
    -- Made here when missing: a new queue has no message, dead letter or
    -- remembered id an id could collide with.
    SELECT c.stream_id, c.stream_type, c.next_offset INTO v_stream_id, v_type, v_next
      FROM event_streaming.create_stream(p_stream_name, 2::smallint) c;
    IF v_type IS DISTINCT FROM 2 AND v_type IS NOT NULL THEN
        RETURN QUERY SELECT 'wrong_type'::text, NULL::bigint, NULL::uuid[], v_type;
        RETURN;
    END IF;
    SELECT s.deduplication_window INTO v_window
      FROM event_streaming.streams s WHERE s.stream_id = v_stream_id;

    -- Taken after the lock: enqueue times never go backwards in queue order.
    v_now := clock_timestamp();
    v_visible := greatest(v_now, p_deliver_at);
    IF v_window > interval '0' THEN
        WITH claimed AS (
            INSERT INTO event_streaming.queue_remembered_ids AS r (stream_id, event_id, forget_at)
            SELECT v_stream_id, u.id, v_now + v_window FROM unnest(p_event_ids) AS u(id)
            ON CONFLICT (stream_id, event_id) DO UPDATE SET forget_at = EXCLUDED.forget_at
             WHERE r.forget_at <= v_now
            RETURNING r.event_id
        )
        SELECT coalesce(array_agg(event_id), '{}') INTO v_fresh FROM claimed;
    ELSIF EXISTS (SELECT 1 FROM event_streaming.queue_remembered_ids r
                   WHERE r.stream_id = v_stream_id) THEN
        -- No window now, but ids enqueued under an earlier one are remembered.
        v_fresh := ARRAY(SELECT u.id FROM unnest(p_event_ids) AS u(id)
                          WHERE NOT EXISTS (
                                SELECT 1 FROM event_streaming.queue_remembered_ids r
                                 WHERE r.stream_id = v_stream_id AND r.event_id = u.id
                                   AND r.forget_at > v_now));
    ELSE
        v_fresh := p_event_ids;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_ordering_keys) AS u(k) WHERE u.k IS NOT NULL) THEN
        v_busy := event_streaming.busy_keys(v_stream_id, p_ordering_keys);
    END IF;

    LOOP
        WITH batch AS (
            SELECT t.*, row_number() OVER (ORDER BY t.ord) AS pos,
                   t.ordering_key IS NOT NULL AND (
                       t.ordering_key = ANY (v_busy)
                       OR row_number() OVER (PARTITION BY t.ordering_key ORDER BY t.ord) > 1
                   ) AS parked
              FROM unnest(p_event_ids, p_event_types, p_content_types, p_data_json,
                          p_data_bytes, p_metadata, p_correlation_ids, p_causation_ids,
                          p_payload_bytes, p_ordering_keys)
                   WITH ORDINALITY AS t(id, event_type, content_type, data_json, data_bytes,
                                        metadata, correlation_id, causation_id, payload_bytes,
                                        ordering_key, ord)
             WHERE t.id = ANY (v_fresh)
        ), inserted AS (
            INSERT INTO event_streaming.queue_messages (
                stream_id, queue_offset, event_id, event_type, content_type, data_json,
                data_bytes, metadata, correlation_id, causation_id, created_at, visible_at,
                payload_bytes, ordering_key, state)
            SELECT v_stream_id, v_next + b.pos - 1, b.id, b.event_type, b.content_type,
                   b.data_json, b.data_bytes, b.metadata, b.correlation_id, b.causation_id,
                   v_now, v_visible, b.payload_bytes, b.ordering_key,
                   CASE WHEN b.parked THEN 2 WHEN v_visible > v_now THEN 1 ELSE 0 END
              FROM batch b
            ON CONFLICT (stream_id, event_id) DO NOTHING
            RETURNING event_id
        )
        SELECT coalesce(array_agg(event_id), '{}') INTO v_written FROM inserted;
        v_dead := '{}';
        IF EXISTS (SELECT 1 FROM event_streaming.dead_letters d WHERE d.stream_id = v_stream_id) THEN
            SELECT coalesce(array_agg(u.id), '{}') INTO v_dead FROM unnest(v_written) AS u(id)
             WHERE EXISTS (SELECT 1 FROM event_streaming.dead_letters d
                            WHERE d.stream_id = v_stream_id AND d.event_id = u.id);
        END IF;
        EXIT WHEN cardinality(v_written) = cardinality(v_fresh) AND cardinality(v_dead) = 0;
        -- Rare: an id still in the queue past its window, or dead-lettered
        -- meanwhile. Our rows are ours alone (not yet committed): write again.
        DELETE FROM event_streaming.queue_messages m
         WHERE m.stream_id = v_stream_id AND m.queue_offset >= v_next;
        v_fresh := ARRAY(SELECT u.id FROM unnest(v_written) AS u(id) WHERE u.id <> ALL (v_dead));
    END LOOP;

    IF cardinality(v_fresh) > 0 THEN
        UPDATE event_streaming.streams
           SET next_offset = v_next + cardinality(v_fresh), stream_type = 2
         WHERE stream_id = v_stream_id;
    END IF;
    RETURN QUERY SELECT 'enqueued'::text, v_next,
        ARRAY(SELECT u.id FROM unnest(p_event_ids) WITH ORDINALITY AS u(id, ord)
               WHERE u.id <> ALL (v_fresh) ORDER BY u.ord),
        v_type;
END
$$;

-- Delete the held messages named, by id (p_by_id) or by the delivery a receipt
-- names (p_deliveries); p_event_ids are all their ids. Returns the ids deleted
-- with the delivery each was deleted as, and, when some were not, the ids that
-- were in the queue when the call began (NOT_HELD rather than NOT_FOUND). Keys
-- of the deleted messages are released in a statement of their own (see
-- release_keys; released says how many messages became deliverable).
-- actual_type is NULL when there is no such stream.
CREATE FUNCTION event_streaming.acknowledge_messages(
    p_stream_name  text,
    p_consumer_id  text,
    p_event_ids    uuid[],
    p_by_id        uuid[],
    p_deliveries   uuid[]
) RETURNS TABLE (
    actual_type   smallint,
    acknowledged  uuid[],
    deliveries    uuid[],
    present       uuid[],
    released      integer
) LANGUAGE plpgsql AS $$
DECLARE
    v_stream_id  bigint;
    v_type       smallint;
    v_acked      uuid[];
    v_delivery   uuid[];
    v_keys       text[];
    v_offsets    bigint[];
    v_present    uuid[];
    v_released   integer := 0;
BEGIN
    SELECT s.stream_id, s.stream_type INTO v_stream_id, v_type
      FROM event_streaming.streams s WHERE s.stream_name = p_stream_name;
    IF NOT FOUND OR v_type IS DISTINCT FROM 2 THEN
        RETURN QUERY SELECT v_type, '{}'::uuid[], '{}'::uuid[], '{}'::uuid[], 0;
        RETURN;
    END IF;
    -- The ids go through a subquery so that the plan always looks them up in the
    -- (stream_id, event_id) index, whatever the statistics say.
    WITH acked AS (
        DELETE FROM event_streaming.queue_messages m
         WHERE m.stream_id = v_stream_id
           AND m.event_id = ANY ((SELECT p_event_ids)::uuid[])
           AND m.consumer_id = p_consumer_id
           AND (m.event_id = ANY (p_by_id) OR m.delivery_id = ANY (p_deliveries))
        RETURNING m.event_id, m.delivery_id, m.ordering_key, m.queue_offset
    )
    SELECT coalesce(array_agg(a.event_id), '{}'), coalesce(array_agg(a.delivery_id), '{}'),
           array_agg(a.ordering_key) FILTER (WHERE a.ordering_key IS NOT NULL),
           array_agg(a.queue_offset) FILTER (WHERE a.ordering_key IS NOT NULL),
           CASE WHEN count(*) < cardinality(p_event_ids) THEN
               ARRAY(SELECT m.event_id FROM event_streaming.queue_messages m
                      WHERE m.stream_id = v_stream_id
                        AND m.event_id = ANY ((SELECT p_event_ids)::uuid[]))
           END
      INTO v_acked, v_delivery, v_keys, v_offsets, v_present
      FROM acked a;
    IF v_keys IS NOT NULL THEN
        v_released := event_streaming.release_keys(v_stream_id, v_keys, v_offsets);
    END IF;
    RETURN QUERY SELECT v_type, v_acked, v_delivery, coalesce(v_present, '{}'), v_released;
END
$$;

-- The message p_event_id of queue p_stream_name, locked, when p_consumer_id holds
-- it (by the delivery p_delivery_id, unless that is NULL). outcome: 'held'
-- (stream_id, queue_offset, delivery_attempts and the queue's settings set),
-- 'not_found', 'not_held', or 'wrong_type' (actual_type). A message due for
-- another delivery with none left (its last allowed lease ran out) is a dead
-- letter already, whoever asks: it goes to the dead-letter queue with
-- p_expired_reason and the answer is 'not_found'.
CREATE FUNCTION event_streaming.held_message(
    p_stream_name         text,
    p_consumer_id         text,
    p_event_id            uuid,
    p_delivery_id         uuid,
    p_expired_reason      text,
    OUT outcome           text,
    OUT stream_id         bigint,
    OUT queue_offset      bigint,
    OUT delivery_attempts integer,
    OUT max_attempts      integer,
    OUT retry_initial     interval,
    OUT retry_max         interval,
    OUT retry_multiplier  double precision,
    OUT actual_type       smallint
) LANGUAGE plpgsql AS $$
DECLARE
    v_consumer  text;
    v_delivery  uuid;
    v_due       boolean;
BEGIN
    SELECT s.stream_id, s.stream_type, s.max_delivery_attempts, s.retry_initial_delay,
           s.retry_max_delay, s.retry_multiplier
      INTO stream_id, actual_type, max_attempts, retry_initial, retry_max, retry_multiplier
      FROM event_streaming.streams s WHERE s.stream_name = p_stream_name;
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN;
    END IF;
    IF actual_type IS DISTINCT FROM 2 AND actual_type IS NOT NULL THEN
        outcome := 'wrong_type';
        RETURN;
    END IF;
    SELECT m.queue_offset, m.consumer_id, m.delivery_id, m.delivery_attempts,
           m.state = 1 AND m.visible_at <= now()
      INTO queue_offset, v_consumer, v_delivery, delivery_attempts, v_due
      FROM event_streaming.queue_messages m
     WHERE m.stream_id = held_message.stream_id AND m.event_id = p_event_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'not_found';
    ELSIF delivery_attempts >= max_attempts AND v_due THEN
        PERFORM event_streaming.bury_messages(stream_id, ARRAY[queue_offset], p_expired_reason);
        outcome := 'not_found';
    ELSIF v_consumer IS DISTINCT FROM p_consumer_id
          OR (p_delivery_id IS NOT NULL AND v_delivery IS DISTINCT FROM p_delivery_id) THEN
        outcome := 'not_held';
    ELSE
        outcome := 'held';
    END IF;
END
$$;

-- Give held messages back (a Nack: one; a closing Consume stream: all it held),
-- each named by id or, where p_deliveries has one, by that delivery. Visible
-- again after p_delay (NULL: after the stream's retry delay); one that had had
-- its last allowed delivery is dead-lettered with p_reason. outcome per message:
-- 'released', 'dead_lettered', or what held_message answered ('not_found',
-- 'not_held', 'wrong_type').
CREATE FUNCTION event_streaming.give_back_messages(
    p_stream_name     text,
    p_consumer_id     text,
    p_event_ids       uuid[],
    p_deliveries      uuid[],
    p_delay           interval,
    p_reason          text,
    p_expired_reason  text
) RETURNS TABLE (event_id uuid, outcome text, actual_type smallint) LANGUAGE plpgsql AS $$
DECLARE
    h  record;
    i  integer;
BEGIN
    -- Every message's row first, in one order: a dead-lettering below then waits
    -- for no row after it has taken key locks.
    PERFORM 1 FROM event_streaming.queue_messages m
      JOIN event_streaming.streams s ON s.stream_id = m.stream_id
     WHERE s.stream_name = p_stream_name AND m.event_id = ANY (p_event_ids)
     ORDER BY m.queue_offset
       FOR UPDATE OF m;
    FOR i IN 1 .. cardinality(p_event_ids) LOOP
        SELECT * INTO h FROM event_streaming.held_message(
            p_stream_name, p_consumer_id, p_event_ids[i], p_deliveries[i], p_expired_reason);
        IF h.outcome <> 'held' THEN
            RETURN QUERY SELECT p_event_ids[i], h.outcome, h.actual_type;
        ELSIF h.delivery_attempts >= h.max_attempts THEN
            PERFORM event_streaming.bury_messages(h.stream_id, ARRAY[h.queue_offset], p_reason);
            RETURN QUERY SELECT p_event_ids[i], 'dead_lettered'::text, h.actual_type;
        ELSE
            UPDATE event_streaming.queue_messages
               SET consumer_id = NULL, lease_until = NULL, state = 1,
                   visible_at = clock_timestamp() + coalesce(p_delay, event_streaming.retry_delay(
                       h.retry_initial, h.retry_max, h.retry_multiplier, h.delivery_attempts))
             WHERE stream_id = h.stream_id AND queue_offset = h.queue_offset;
            RETURN QUERY SELECT p_event_ids[i], 'released'::text, h.actual_type;
        END IF;
    END LOOP;
END
$$;

-- Extend a held message's lease to now() + p_timeout (then, unless that was its
-- last allowed delivery, the retry delay before it is due again). outcome:
-- 'extended' (visible_until: the lease's new end), or what held_message answered.
CREATE FUNCTION event_streaming.extend_visibility(
    p_stream_name     text,
    p_consumer_id     text,
    p_event_id        uuid,
    p_delivery_id     uuid,
    p_timeout         interval,
    p_expired_reason  text
) RETURNS TABLE (outcome text, visible_until timestamptz, actual_type smallint)
LANGUAGE plpgsql AS $$
DECLARE
    h        record;
    v_until  timestamptz;
BEGIN
    SELECT * INTO h FROM event_streaming.held_message(
        p_stream_name, p_consumer_id, p_event_id, p_delivery_id, p_expired_reason);
    IF h.outcome <> 'held' THEN
        RETURN QUERY SELECT h.outcome, NULL::timestamptz, h.actual_type;
        RETURN;
    END IF;
    v_until := now() + p_timeout;
    UPDATE event_streaming.queue_messages
       SET lease_until = v_until, state = 1,
           visible_at = v_until + CASE WHEN h.delivery_attempts >= h.max_attempts
                                       THEN interval '0'
                                       ELSE event_streaming.retry_delay(
                                                h.retry_initial, h.retry_max,
                                                h.retry_multiplier, h.delivery_attempts) END
     WHERE stream_id = h.stream_id AND queue_offset = h.queue_offset;
    RETURN QUERY SELECT 'extended'::text, v_until, h.actual_type;
END
$$;

-- Put dead letters (p_event_ids, or all when NULL) back at the end of the queue
-- with their attempts reset, oldest dead letter first, behind the messages of
-- their ordering key. Expired messages that reached their last attempt are
-- dead-lettered first (with p_expired_reason), so "all" includes them. outcome:
-- 'redriven' (redriven = how many), 'not_found' (no such stream), 'wrong_type'
-- (actual_type). A dead letter whose id is in the queue again (which
-- enqueue_messages prevents, but a database written by an earlier build may
-- hold) stays where it is and is not counted.
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
    v_busy       text[] := '{}';
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
    IF EXISTS (SELECT 1 FROM event_streaming.dead_letters d
                WHERE d.stream_id = v_stream_id AND d.ordering_key IS NOT NULL
                  AND (p_event_ids IS NULL OR d.event_id = ANY (p_event_ids))) THEN
        v_busy := event_streaming.busy_keys(v_stream_id, ARRAY(
            SELECT d.ordering_key FROM event_streaming.dead_letters d
             WHERE d.stream_id = v_stream_id AND d.ordering_key IS NOT NULL
               AND (p_event_ids IS NULL OR d.event_id = ANY (p_event_ids))));
    END IF;
    WITH moved AS (
        DELETE FROM event_streaming.dead_letters d
         WHERE d.stream_id = v_stream_id
           AND (p_event_ids IS NULL OR d.event_id = ANY ((SELECT p_event_ids)::uuid[]))
           AND NOT EXISTS (SELECT 1 FROM event_streaming.queue_messages m
                            WHERE m.stream_id = d.stream_id AND m.event_id = d.event_id)
        RETURNING d.*
    ), placed AS (
        SELECT moved.*, row_number() OVER (ORDER BY dead_letter_id) AS pos,
               ordering_key IS NOT NULL AND (
                   ordering_key = ANY (v_busy)
                   OR row_number() OVER (PARTITION BY ordering_key ORDER BY dead_letter_id) > 1
               ) AS parked
          FROM moved
    )
    INSERT INTO event_streaming.queue_messages (
        stream_id, queue_offset, event_id, event_type, content_type, data_json, data_bytes,
        metadata, correlation_id, causation_id, created_at, visible_at, payload_bytes,
        ordering_key, state)
    SELECT stream_id, v_next + pos - 1, event_id, event_type, content_type, data_json,
           data_bytes, metadata, correlation_id, causation_id, created_at, now(),
           payload_bytes, ordering_key, CASE WHEN parked THEN 2 ELSE 0 END
      FROM placed;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE event_streaming.streams SET next_offset = v_next + v_count
         WHERE stream_id = v_stream_id;
    END IF;
    RETURN QUERY SELECT 'redriven'::text, v_count, v_type;
END
$$;

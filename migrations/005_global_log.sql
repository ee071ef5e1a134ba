-- The global log ($all): one dense, gap-safe order across every persistent stream,
-- atomic appends to several streams, and consumer checkpoints on the global log.
--
-- How positions stay dense and gap-safe without a reader ever waiting for a hole:
-- an append takes its positions from event_streaming.log_head, whose one row it
-- updates as the last step before writing its events, and keeps that row locked
-- until its commit. The next append's update waits for that commit, so positions
-- are handed out in commit order, and a transaction's rows are visible before the
-- next one can even take its positions (PostgreSQL makes a commit visible before
-- it releases the committer's locks). A reader that has seen position P therefore
-- can never see a lower one appear later; a refused or rolled-back append gives
-- its positions back with its update (nothing is consumed). Everything else an
-- append does (stream locks, expectations, duplicate checks) happens before the
-- head is taken, so the head is held only for the insert and the commit. Stream
-- rows are locked in name order, then the head: no two appends deadlock.
--
-- The cost, measured and chosen (see the README): appends of the whole database
-- commit one at a time, each holding the head for its insert and its commit's
-- flush, rather than in parallel; batches, and several calls grouped into one
-- transaction, amortise it.

CREATE TABLE event_streaming.log_head (
    -- One row only.
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The position of the newest event ever appended (0: none yet). Only grows.
    last_position  bigint  NOT NULL
);

ALTER TABLE event_streaming.events ADD COLUMN global_position bigint;

-- Events written before this migration take positions in the order they were
-- appended (timestamps are taken under the stream's lock, so within a stream they
-- follow offsets).
WITH numbered AS (
    SELECT stream_id, stream_offset,
           row_number() OVER (ORDER BY created_at, stream_id, stream_offset) AS position
      FROM event_streaming.events
)
UPDATE event_streaming.events e SET global_position = n.position
  FROM numbered n
 WHERE e.stream_id = n.stream_id AND e.stream_offset = n.stream_offset;

INSERT INTO event_streaming.log_head (last_position)
SELECT coalesce(max(global_position), 0) FROM event_streaming.events;

ALTER TABLE event_streaming.events ALTER COLUMN global_position SET NOT NULL;

-- ReadAll and SubscribeToAll in order; with an event-type filter, each type's own
-- run of positions; with a stream-prefix filter, each matching stream's.
CREATE UNIQUE INDEX events_global_position_idx ON event_streaming.events (global_position);
CREATE INDEX events_type_position_idx ON event_streaming.events (event_type, global_position);
CREATE INDEX events_stream_position_idx ON event_streaming.events (stream_id, global_position);

-- One event type's run of the global log from p_from (inclusive), up or down, at
-- most p_limit events: for ReadAll and SubscribeToAll filtered by type. Planned
-- afresh each time (EXECUTE) with the actual type, so that a rare type walks
-- events_type_position_idx while a common one may walk the log itself: a plan
-- made for any type cannot tell them apart, and walking the whole log to find a
-- rare type costs what the log holds, not what the read returns.
CREATE FUNCTION event_streaming.events_of_type(
    p_type      text,
    p_from      bigint,
    p_limit     integer,
    p_backward  boolean
) RETURNS SETOF event_streaming.events LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_backward THEN
        RETURN QUERY EXECUTE
            'SELECT * FROM event_streaming.events
              WHERE event_type = $1 AND global_position <= $2
              ORDER BY global_position DESC LIMIT $3'
            USING p_type, p_from, p_limit;
    ELSE
        RETURN QUERY EXECUTE
            'SELECT * FROM event_streaming.events
              WHERE event_type = $1 AND global_position >= $2
              ORDER BY global_position LIMIT $3'
            USING p_type, p_from, p_limit;
    END IF;
END
$$;

-- Consumer groups' committed positions in the global log (CommitOffset on "$all").
CREATE TABLE event_streaming.all_consumer_offsets (
    consumer_group      text        PRIMARY KEY,
    committed_position  bigint      NOT NULL CHECK (committed_position >= 0),
    committed_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The row of a stream about to be written, locked FOR NO KEY UPDATE until commit,
-- and whether this call made it (typed p_type). Loops because a concurrent
-- DeleteStream may remove the row between the failed insert and the select.
CREATE FUNCTION event_streaming.lock_stream_for_write(
    p_stream_name    text,
    p_type           smallint,
    OUT stream_id    bigint,
    OUT stream_type  smallint,
    OUT next_offset  bigint,
    OUT made         boolean
) LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        SELECT s.stream_id, s.stream_type, s.next_offset INTO stream_id, stream_type, next_offset
          FROM event_streaming.streams s WHERE s.stream_name = p_stream_name FOR NO KEY UPDATE;
        IF FOUND THEN
            made := false;
            RETURN;
        END IF;
        INSERT INTO event_streaming.streams AS s (stream_name, stream_type)
        VALUES (p_stream_name, p_type) ON CONFLICT (stream_name) DO NOTHING
        RETURNING s.stream_id, s.stream_type, s.next_offset INTO stream_id, stream_type, next_offset;
        IF FOUND THEN
            made := true;
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- 004's helper, now the same loop.
CREATE OR REPLACE FUNCTION event_streaming.create_stream(
    p_stream_name    text,
    p_type           smallint,
    OUT stream_id    bigint,
    OUT stream_type  smallint,
    OUT next_offset  bigint
) LANGUAGE sql AS $$
    SELECT l.stream_id, l.stream_type, l.next_offset
      FROM event_streaming.lock_stream_for_write(p_stream_name, p_type) l
$$;

-- Which of a call's events are already stored (by id, each in the stream of its
-- append): matches (how many), exact (all of them, at consecutive global
-- positions in the call's order: an earlier run of the same call) and
-- conflict_event_id (the first id found). Planned afresh each time (EXECUTE), as
-- 001's repeated_batch: only called when something conflicted.
CREATE FUNCTION event_streaming.repeated_call(
    p_stream_ids          bigint[],
    p_event_append        integer[],
    p_event_ids           uuid[],
    OUT matches           integer,
    OUT exact             boolean,
    OUT conflict_event_id uuid
) LANGUAGE plpgsql AS $$
DECLARE
    v_min_base bigint;
    v_max_base bigint;
BEGIN
    EXECUTE 'SELECT count(*)::integer, min(e.global_position - (b.ord - 1)),
                    max(e.global_position - (b.ord - 1)), (array_agg(b.id ORDER BY b.ord))[1]
               FROM unnest($2, $3) WITH ORDINALITY AS b(app, id, ord)
               JOIN event_streaming.events e ON e.stream_id = ($1)[b.app] AND e.event_id = b.id'
       INTO matches, v_min_base, v_max_base, conflict_event_id
      USING p_stream_ids, p_event_append, p_event_ids;
    exact := matches = cardinality(p_event_ids) AND v_min_base = v_max_base;
END
$$;

-- Append to one or more streams (and optionally commit a consumer checkpoint), all
-- or nothing, in one round trip. Appends are given in request order: p_stream_names
-- and p_expected (NULL: any; -1: no events; N: last offset N) per append, and the
-- events' columns with p_event_append naming each event's append (1-based, events
-- of an append in order). The checkpoint: p_checkpoint_stream (a log, or '$all'),
-- p_checkpoint_group, p_checkpoint_offset; all NULL for none.
--
-- Answers one row per append, or rows saying why nothing was written:
--   'appended'                  first/last offset and global position, per append
--   'repeat'                    the whole call is already in (same ids, streams and
--                               order): nothing written, its original results
--   'wrong_offset'              one row per append whose expectation failed
--                               (last_offset: the actual last offset, -1: none)
--   'duplicate'                 some ids are already stored and this is no repeat
--                               (conflict_event_id the first)
--   'wrong_type'                the append's stream is not a log (actual_type)
--   'checkpoint_exists'         the group's committed offset is already at or past
--                               the checkpoint (last_offset: the committed offset)
--   'checkpoint_not_found'      the checkpoint's stream does not exist
--   'checkpoint_out_of_range'   the checkpoint is beyond the newest offset or
--                               position (last_offset: the newest)
--   'checkpoint_wrong_type'     the checkpoint's stream is not a log (actual_type)
-- Only 'appended' changes anything: streams this call made for a refused write are
-- removed again before it answers.
CREATE FUNCTION event_streaming.append_to_streams(
    p_stream_names        text[],
    p_expected            bigint[],
    p_event_append        integer[],
    p_event_ids           uuid[],
    p_event_types         text[],
    p_content_types       text[],
    p_data_json           jsonb[],
    p_data_bytes          bytea[],
    p_metadata            jsonb[],
    p_correlation_ids     text[],
    p_causation_ids       text[],
    p_payload_bytes       integer[],
    p_checkpoint_stream   text,
    p_checkpoint_group    text,
    p_checkpoint_offset   bigint
) RETURNS TABLE (
    outcome            text,
    append_index       integer,
    first_offset       bigint,
    last_offset        bigint,
    first_position     bigint,
    last_position      bigint,
    conflict_event_id  uuid,
    actual_type        smallint
) LANGUAGE plpgsql AS $$
DECLARE
    v_appends    integer := coalesce(cardinality(p_stream_names), 0);
    v_total      integer := coalesce(cardinality(p_event_ids), 0);
    v_ids        bigint[];
    v_types      smallint[];
    v_next       bigint[];
    v_made       bigint[] := '{}';
    v_counts     integer[];
    v_lock       record;
    v_k          integer;
    v_wrong      boolean := false;
    v_repeat     record;
    v_base       bigint;
    v_inserted   integer;
    v_now        timestamptz;
    v_cp_id      bigint;
    v_cp_type    smallint;
    v_newest     bigint;
    v_committed  bigint;
BEGIN
    v_ids := array_fill(NULL::bigint, ARRAY[v_appends]);
    v_types := array_fill(NULL::smallint, ARRAY[v_appends]);
    v_next := array_fill(0::bigint, ARRAY[v_appends]);
    SELECT array_agg(c ORDER BY a) INTO v_counts
      FROM (SELECT a, count(e.app)::integer AS c
              FROM generate_series(1, v_appends) AS a
              LEFT JOIN unnest(p_event_append) AS e(app) ON e.app = a
             GROUP BY a) t;

    -- Lock (or make) each stream in name order, so no two calls deadlock. A
    -- missing stream whose expectation already fails is not made.
    FOR v_k IN SELECT u.ord FROM unnest(p_stream_names) WITH ORDINALITY AS u(name, ord)
                ORDER BY u.name COLLATE "C" LOOP
        IF p_expected[v_k] IS NOT NULL AND p_expected[v_k] <> -1 THEN
            SELECT s.stream_id, s.stream_type, s.next_offset INTO v_lock
              FROM event_streaming.streams s
             WHERE s.stream_name = p_stream_names[v_k] FOR NO KEY UPDATE;
            IF NOT FOUND THEN
                v_wrong := true;
                CONTINUE;
            END IF;
        ELSE
            SELECT l.stream_id, l.stream_type, l.next_offset, l.made INTO v_lock
              FROM event_streaming.lock_stream_for_write(p_stream_names[v_k], 1::smallint) l;
            IF v_lock.made THEN
                v_made := v_made || v_lock.stream_id;
            END IF;
        END IF;
        v_ids[v_k] := v_lock.stream_id;
        v_types[v_k] := v_lock.stream_type;
        v_next[v_k] := v_lock.next_offset;
    END LOOP;

    FOR v_k IN 1 .. v_appends LOOP
        IF v_types[v_k] IS DISTINCT FROM 1 AND v_types[v_k] IS NOT NULL THEN
            DELETE FROM event_streaming.streams WHERE stream_id = ANY (v_made);
            RETURN QUERY SELECT 'wrong_type'::text, v_k, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::bigint, NULL::uuid, v_types[v_k];
            RETURN;
        END IF;
    END LOOP;

    -- The checkpoint: writers of one group's checkpoint take turns (a lock on the
    -- group, since its row may not exist yet); the input must not be processed yet.
    IF p_checkpoint_group IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext(p_checkpoint_stream), hashtext(p_checkpoint_group));
        IF p_checkpoint_stream = '$all' THEN
            SELECT h.last_position INTO v_newest FROM event_streaming.log_head h;
            SELECT o.committed_position INTO v_committed
              FROM event_streaming.all_consumer_offsets o
             WHERE o.consumer_group = p_checkpoint_group;
        ELSE
            SELECT s.stream_id, s.stream_type, s.next_offset - 1 INTO v_cp_id, v_cp_type, v_newest
              FROM event_streaming.streams s WHERE s.stream_name = p_checkpoint_stream
               FOR KEY SHARE;
            IF NOT FOUND THEN
                DELETE FROM event_streaming.streams WHERE stream_id = ANY (v_made);
                RETURN QUERY SELECT 'checkpoint_not_found'::text, NULL::integer, NULL::bigint,
                                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::uuid,
                                    NULL::smallint;
                RETURN;
            END IF;
            IF v_cp_type IS DISTINCT FROM 1 AND v_cp_type IS NOT NULL THEN
                DELETE FROM event_streaming.streams WHERE stream_id = ANY (v_made);
                RETURN QUERY SELECT 'checkpoint_wrong_type'::text, NULL::integer, NULL::bigint,
                                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::uuid, v_cp_type;
                RETURN;
            END IF;
            SELECT o.committed_offset INTO v_committed FROM event_streaming.consumer_offsets o
             WHERE o.stream_id = v_cp_id AND o.consumer_group = p_checkpoint_group;
        END IF;
        IF v_committed >= p_checkpoint_offset THEN
            DELETE FROM event_streaming.streams WHERE stream_id = ANY (v_made);
            RETURN QUERY SELECT 'checkpoint_exists'::text, NULL::integer, NULL::bigint,
                                v_committed, NULL::bigint, NULL::bigint, NULL::uuid,
                                NULL::smallint;
            RETURN;
        END IF;
        IF p_checkpoint_offset > v_newest THEN
            DELETE FROM event_streaming.streams WHERE stream_id = ANY (v_made);
            RETURN QUERY SELECT 'checkpoint_out_of_range'::text, NULL::integer, NULL::bigint,
                                v_newest, NULL::bigint, NULL::bigint, NULL::uuid, NULL::smallint;
            RETURN;
        END IF;
    END IF;

    FOR v_k IN 1 .. v_appends LOOP
        IF p_expected[v_k] IS NOT NULL AND p_expected[v_k] <> v_next[v_k] - 1 THEN
            v_wrong := true;
        END IF;
    END LOOP;
    IF v_wrong THEN
        -- A retry of a call that went in still succeeds, whatever came after it.
        IF v_total > 0 THEN
            SELECT * INTO v_repeat
              FROM event_streaming.repeated_call(v_ids, p_event_append, p_event_ids);
        END IF;
        DELETE FROM event_streaming.streams WHERE stream_id = ANY (v_made);
        IF v_total > 0 AND v_repeat.exact THEN
            RETURN QUERY SELECT * FROM event_streaming.call_results(
                'repeat', v_ids, p_event_append, p_event_ids);
        ELSIF v_total > 0 AND v_repeat.matches > 0 THEN
            RETURN QUERY SELECT 'duplicate'::text, NULL::integer, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::bigint, v_repeat.conflict_event_id,
                                NULL::smallint;
        ELSE
            RETURN QUERY SELECT 'wrong_offset'::text, k::integer, NULL::bigint,
                                v_next[k] - 1, NULL::bigint, NULL::bigint, NULL::uuid,
                                NULL::smallint
                           FROM generate_series(1, v_appends) AS k
                          WHERE p_expected[k] IS NOT NULL AND p_expected[k] <> v_next[k] - 1;
        END IF;
        RETURN;
    END IF;

    IF v_total > 0 THEN
        -- The head last: from here to the commit, appends go one at a time.
        UPDATE event_streaming.log_head h SET last_position = h.last_position + v_total
        RETURNING h.last_position - v_total INTO v_base;
        -- Taken after the locks: timestamps never go backwards in offset order.
        v_now := clock_timestamp();
        WITH inserted AS (
            INSERT INTO event_streaming.events (
                stream_id, stream_offset, event_id, event_type, content_type, data_json,
                data_bytes, metadata, correlation_id, causation_id, created_at, payload_bytes,
                global_position)
            SELECT v_ids[t.app],
                   v_next[t.app] + row_number() OVER (PARTITION BY t.app ORDER BY t.ord) - 1,
                   t.id, t.event_type, t.content_type, t.data_json, t.data_bytes, t.metadata,
                   t.correlation_id, t.causation_id, v_now, t.payload_bytes, v_base + t.ord
              FROM unnest(p_event_append, p_event_ids, p_event_types, p_content_types,
                          p_data_json, p_data_bytes, p_metadata, p_correlation_ids,
                          p_causation_ids, p_payload_bytes)
                   WITH ORDINALITY AS t(app, id, event_type, content_type, data_json, data_bytes,
                                        metadata, correlation_id, causation_id, payload_bytes,
                                        ord)
            ON CONFLICT (stream_id, event_id) DO NOTHING
            RETURNING 1
        )
        SELECT count(*) INTO v_inserted FROM inserted;
        IF v_inserted < v_total THEN
            -- Some id was already there: take back what this call wrote (nobody else
            -- can see it yet) and its positions (we still hold the head), then tell
            -- an exact repeat from a partial one.
            DELETE FROM event_streaming.events
             WHERE global_position > v_base AND global_position <= v_base + v_total;
            UPDATE event_streaming.log_head SET last_position = v_base;
            DELETE FROM event_streaming.streams WHERE stream_id = ANY (v_made);
            SELECT * INTO v_repeat
              FROM event_streaming.repeated_call(v_ids, p_event_append, p_event_ids);
            IF v_repeat.exact THEN
                RETURN QUERY SELECT * FROM event_streaming.call_results(
                    'repeat', v_ids, p_event_append, p_event_ids);
            ELSE
                RETURN QUERY SELECT 'duplicate'::text, NULL::integer, NULL::bigint,
                                    NULL::bigint, NULL::bigint, NULL::bigint,
                                    v_repeat.conflict_event_id, NULL::smallint;
            END IF;
            RETURN;
        END IF;
        -- The writes and the streams' types (when they had none yet) go together.
        UPDATE event_streaming.streams s
           SET next_offset = s.next_offset + c.n, stream_type = 1
          FROM unnest(v_ids, v_counts) AS c(id, n)
         WHERE s.stream_id = c.id AND c.n > 0;
    END IF;

    IF p_checkpoint_group IS NOT NULL THEN
        IF p_checkpoint_stream = '$all' THEN
            INSERT INTO event_streaming.all_consumer_offsets (consumer_group, committed_position)
            VALUES (p_checkpoint_group, p_checkpoint_offset)
            ON CONFLICT (consumer_group) DO UPDATE
               SET committed_position = EXCLUDED.committed_position,
                   committed_at = clock_timestamp();
        ELSE
            INSERT INTO event_streaming.consumer_offsets (stream_id, consumer_group, committed_offset)
            VALUES (v_cp_id, p_checkpoint_group, p_checkpoint_offset)
            ON CONFLICT (stream_id, consumer_group) DO UPDATE
               SET committed_offset = EXCLUDED.committed_offset, committed_at = clock_timestamp();
        END IF;
    END IF;

    RETURN QUERY SELECT 'appended'::text, k::integer,
                        v_next[k], v_next[k] + v_counts[k] - 1,
                        v_base + (SELECT min(o.ord) FROM unnest(p_event_append)
                                    WITH ORDINALITY AS o(app, ord) WHERE o.app = k),
                        v_base + (SELECT max(o.ord) FROM unnest(p_event_append)
                                    WITH ORDINALITY AS o(app, ord) WHERE o.app = k),
                        NULL::uuid, 1::smallint
                   FROM generate_series(1, v_appends) AS k;
END
$$;

-- The results of an earlier run of a call (offsets and positions of its events,
-- per append), for an exact repeat.
CREATE FUNCTION event_streaming.call_results(
    p_outcome       text,
    p_stream_ids    bigint[],
    p_event_append  integer[],
    p_event_ids     uuid[]
) RETURNS TABLE (
    outcome            text,
    append_index       integer,
    first_offset       bigint,
    last_offset        bigint,
    first_position     bigint,
    last_position      bigint,
    conflict_event_id  uuid,
    actual_type        smallint
) LANGUAGE sql AS $$
    SELECT p_outcome, b.app::integer, min(e.stream_offset), max(e.stream_offset),
           min(e.global_position), max(e.global_position), NULL::uuid, 1::smallint
      FROM unnest(p_event_append, p_event_ids) AS b(app, id)
      JOIN event_streaming.events e ON e.stream_id = p_stream_ids[b.app] AND e.event_id = b.id
     GROUP BY b.app
     ORDER BY b.app
$$;

-- 004's single-stream append is now the one-stream case of append_to_streams.
DROP FUNCTION event_streaming.append_events(
    text, bigint, uuid[], text[], text[], jsonb[], bytea[], jsonb[], text[], text[], integer[]);

-- Lets a CommitOffset on "$all" (and GetConsumerOffset) go by the same rules as a
-- stream's: the position must exist.
CREATE FUNCTION event_streaming.commit_all_offset(p_group text, p_position bigint)
RETURNS TABLE (committed boolean, newest bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_newest bigint;
BEGIN
    SELECT h.last_position INTO v_newest FROM event_streaming.log_head h;
    IF p_position > v_newest THEN
        RETURN QUERY SELECT false, v_newest;
        RETURN;
    END IF;
    INSERT INTO event_streaming.all_consumer_offsets (consumer_group, committed_position)
    VALUES (p_group, p_position)
    ON CONFLICT (consumer_group) DO UPDATE
       SET committed_position = EXCLUDED.committed_position, committed_at = clock_timestamp();
    RETURN QUERY SELECT true, v_newest;
END
$$;

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
-- An event's ordering key (EventData.ordering_key), stored and returned on a log;
-- queues order their deliveries by it (006).
ALTER TABLE event_streaming.events ADD COLUMN ordering_key text;

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
-- conflict_event_id (the first id found). p_stream_ids are the call's appends'
-- streams; p_event_append numbers appends from p_base + 1. Planned afresh each
-- time (EXECUTE), as 001's repeated_batch: only called when something conflicted.
CREATE FUNCTION event_streaming.repeated_call(
    p_stream_ids          bigint[],
    p_event_append        integer[],
    p_event_ids           uuid[],
    p_base                integer,
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
               JOIN event_streaming.events e
                 ON e.stream_id = ($1)[b.app - $4] AND e.event_id = b.id'
       INTO matches, v_min_base, v_max_base, conflict_event_id
      USING p_stream_ids, p_event_append, p_event_ids, p_base;
    exact := matches = cardinality(p_event_ids) AND v_min_base = v_max_base;
END
$$;

-- Append calls, each to one or more streams and optionally with a consumer
-- checkpoint, each all or nothing, in one transaction and one round trip (group
-- commit: calls that arrive while another write is in flight go together). A
-- call's failure writes nothing of it and does not touch the others; calls are
-- applied in the order given, each seeing what the earlier ones wrote.
--
-- Appends, in order: p_call (the call each belongs to, 1-based, a call's appends
-- together), p_stream_names and p_expected (NULL: any; -1: no events; N: last
-- offset N). Events, in order: p_event_append (their append, 1-based) and their
-- columns. Checkpoints, one per call (NULL when the call has none):
-- p_checkpoint_streams (a log, or '$all'), p_checkpoint_groups, p_checkpoint_offsets.
--
-- Every stream of the group is locked (or made) in name order before anything is
-- written, and the head last: no two groups deadlock. Streams made for calls that
-- all failed are removed again.
--
-- Answers, per call (call_index), one row per append or rows saying why nothing
-- of it was written:
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
CREATE FUNCTION event_streaming.append_calls(
    p_call                  integer[],
    p_stream_names          text[],
    p_expected              bigint[],
    p_event_append          integer[],
    p_event_ids             uuid[],
    p_event_types           text[],
    p_content_types         text[],
    p_data_json             jsonb[],
    p_data_bytes            bytea[],
    p_metadata              jsonb[],
    p_correlation_ids       text[],
    p_causation_ids         text[],
    p_payload_bytes         integer[],
    p_ordering_keys         text[],
    p_checkpoint_streams    text[],
    p_checkpoint_groups     text[],
    p_checkpoint_offsets    bigint[]
) RETURNS TABLE (
    call_index         integer,
    outcome            text,
    append_index       integer,
    first_offset       bigint,
    last_offset        bigint,
    first_position     bigint,
    last_position      bigint,
    conflict_event_id  uuid,
    actual_type        smallint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_calls      integer := coalesce(cardinality(p_checkpoint_groups), 0);
    v_names      text[];
    v_ids        bigint[];
    v_types      smallint[];
    v_next       bigint[];
    v_made       bigint[] := '{}';
    v_lock       record;
    v_i          integer;
    v_c          integer;
    v_k          integer;
    v_first      integer;
    v_last       integer;
    v_ev_first   integer;
    v_ev_last    integer;
    v_count      integer;
    v_stream     integer;
    v_wrong      boolean;
    v_failed     text;
    v_fail_app   integer;
    v_fail_type  smallint;
    v_fail_off   bigint;
    v_repeat     record;
    v_head       bigint;
    v_inserted   integer;
    v_now        timestamptz;
    v_cp_id      bigint;
    v_cp_type    smallint;
    v_newest     bigint;
    v_committed  bigint;
    v_app_ids    bigint[];
    v_app_next   bigint[];
    v_fast       boolean := false;
    v_slots      integer[];
    v_bases      bigint[];
    v_counts     bigint[];
BEGIN
    -- Lock (or make) every stream of the group, once each, in name order.
    SELECT array_agg(d.n ORDER BY d.n COLLATE "C") INTO v_names
      FROM (SELECT DISTINCT n FROM unnest(p_stream_names) AS n) d;
    v_names := coalesce(v_names, '{}');
    v_ids := array_fill(NULL::bigint, ARRAY[cardinality(v_names)]);
    v_types := array_fill(NULL::smallint, ARRAY[cardinality(v_names)]);
    v_next := array_fill(0::bigint, ARRAY[cardinality(v_names)]);
    FOR v_i IN 1 .. cardinality(v_names) LOOP
        SELECT l.stream_id, l.stream_type, l.next_offset, l.made INTO v_lock
          FROM event_streaming.lock_stream_for_write(v_names[v_i], 1::smallint) l;
        IF v_lock.made THEN
            v_made := v_made || v_lock.stream_id;
            v_types[v_i] := NULL;  -- made for the group: typed only by a write
        ELSE
            v_types[v_i] := v_lock.stream_type;
        END IF;
        v_ids[v_i] := v_lock.stream_id;
        v_next[v_i] := v_lock.next_offset;
    END LOOP;

    -- The whole group in one statement, when every call goes in as asked (the
    -- common case under load): no checkpoint, every append has events, every
    -- stream takes persistent events, and every expectation holds with the
    -- calls applied in order. If an id turns out to be stored already, the rows
    -- are taken back and the calls are decided one by one below.
    IF NOT EXISTS (SELECT 1 FROM unnest(p_checkpoint_groups) g WHERE g IS NOT NULL) THEN
        SELECT coalesce(bool_and(
                   (v_types[x.slot] IS NULL OR v_types[x.slot] = 1) AND x.n > 0
                   AND (p_expected[x.k] IS NULL OR p_expected[x.k] = x.base - 1)), false),
               array_agg(x.slot ORDER BY x.k), array_agg(x.base ORDER BY x.k),
               array_agg(x.n ORDER BY x.k)
          INTO v_fast, v_slots, v_bases, v_counts
          FROM (SELECT a.k, a.slot, a.n,
                       v_next[a.slot] + coalesce(sum(a.n) OVER (
                           PARTITION BY a.slot ORDER BY a.k
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS base
                  FROM (SELECT k.k, s.slot::integer AS slot, coalesce(c.n, 0) AS n
                          FROM generate_subscripts(p_stream_names, 1) AS k(k)
                          JOIN unnest(v_names) WITH ORDINALITY AS s(name, slot)
                            ON s.name = p_stream_names[k.k]
                          LEFT JOIN (SELECT e.app, count(*) AS n
                                       FROM unnest(p_event_append) AS e(app)
                                      GROUP BY e.app) c ON c.app = k.k) a) x;
    END IF;
    IF v_fast THEN
        SELECT h.last_position INTO v_head FROM event_streaming.log_head h FOR UPDATE;
        v_now := clock_timestamp();
        WITH inserted AS (
            INSERT INTO event_streaming.events (
                stream_id, stream_offset, event_id, event_type, content_type, data_json,
                data_bytes, metadata, correlation_id, causation_id, created_at,
                payload_bytes, global_position, ordering_key)
            SELECT v_ids[v_slots[t.app]],
                   v_bases[t.app] + row_number() OVER (PARTITION BY t.app ORDER BY t.ord) - 1,
                   t.id, t.event_type, t.content_type, t.data_json, t.data_bytes,
                   t.metadata, t.correlation_id, t.causation_id, v_now, t.payload_bytes,
                   v_head + t.ord, t.ordering_key
              FROM unnest(p_event_append, p_event_ids, p_event_types, p_content_types,
                          p_data_json, p_data_bytes, p_metadata, p_correlation_ids,
                          p_causation_ids, p_payload_bytes, p_ordering_keys)
                   WITH ORDINALITY AS t(app, id, event_type, content_type, data_json,
                                        data_bytes, metadata, correlation_id,
                                        causation_id, payload_bytes, ordering_key, ord)
            ON CONFLICT (stream_id, event_id) DO NOTHING
            RETURNING 1
        )
        SELECT count(*) INTO v_inserted FROM inserted;
        IF v_inserted = cardinality(p_event_ids) THEN
            RETURN QUERY
                SELECT p_call[k], 'appended'::text,
                       (k - min(k) OVER (PARTITION BY p_call[k]) + 1)::integer,
                       v_bases[k], v_bases[k] + v_counts[k] - 1,
                       v_head + o.lo, v_head + o.hi, NULL::uuid, 1::smallint
                  FROM generate_subscripts(p_stream_names, 1) AS k
                  JOIN (SELECT e.app, min(e.ord) AS lo, max(e.ord) AS hi
                          FROM unnest(p_event_append) WITH ORDINALITY AS e(app, ord)
                         GROUP BY e.app) o ON o.app = k
                 ORDER BY k;
            FOR v_k IN 1 .. cardinality(p_stream_names) LOOP
                v_next[v_slots[v_k]] := v_next[v_slots[v_k]] + v_counts[v_k];
                v_types[v_slots[v_k]] := 1;
            END LOOP;
            v_head := v_head + v_inserted;
            v_calls := 0;  -- decided: nothing left for the loop below
        ELSE
            DELETE FROM event_streaming.events
             WHERE global_position > v_head
               AND global_position <= v_head + cardinality(p_event_ids);
        END IF;
    END IF;

    v_first := 1;
    v_ev_first := 1;
    FOR v_c IN 1 .. v_calls LOOP
        -- This call's appends are v_first .. v_last, its events v_ev_first .. v_ev_last.
        v_last := v_first - 1;
        WHILE v_last < coalesce(cardinality(p_call), 0) AND p_call[v_last + 1] = v_c LOOP
            v_last := v_last + 1;
        END LOOP;
        v_ev_last := v_ev_first - 1;
        WHILE v_ev_last < coalesce(cardinality(p_event_append), 0)
              AND p_event_append[v_ev_last + 1] <= v_last LOOP
            v_ev_last := v_ev_last + 1;
        END LOOP;
        v_count := v_ev_last - v_ev_first + 1;
        v_failed := NULL;
        v_app_ids := '{}';
        v_app_next := '{}';
        FOR v_k IN v_first .. v_last LOOP
            v_stream := array_position(v_names, p_stream_names[v_k]);
            v_app_ids := v_app_ids || v_ids[v_stream];
            v_app_next := v_app_next || v_next[v_stream];
        END LOOP;

        -- Types, in request order.
        FOR v_k IN v_first .. v_last LOOP
            v_stream := array_position(v_names, p_stream_names[v_k]);
            IF v_types[v_stream] IS DISTINCT FROM 1 AND v_types[v_stream] IS NOT NULL THEN
                v_failed := 'wrong_type';
                v_fail_app := v_k - v_first + 1;
                v_fail_type := v_types[v_stream];
                EXIT;
            END IF;
        END LOOP;

        -- The checkpoint: the input must not have been processed yet.
        IF v_failed IS NULL AND p_checkpoint_groups[v_c] IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock(
                hashtext(p_checkpoint_streams[v_c]), hashtext(p_checkpoint_groups[v_c]));
            v_committed := NULL;
            v_cp_id := NULL;
            IF p_checkpoint_streams[v_c] = '$all' THEN
                v_newest := coalesce(v_head,
                                     (SELECT h.last_position FROM event_streaming.log_head h));
                SELECT o.committed_position INTO v_committed
                  FROM event_streaming.all_consumer_offsets o
                 WHERE o.consumer_group = p_checkpoint_groups[v_c];
            ELSE
                v_stream := array_position(v_names, p_checkpoint_streams[v_c]);
                IF v_stream IS NOT NULL THEN
                    -- A stream of the group: as the group's earlier calls left it.
                    v_cp_id := v_ids[v_stream];
                    v_cp_type := v_types[v_stream];
                    v_newest := v_next[v_stream] - 1;
                ELSE
                    SELECT s.stream_id, s.stream_type, s.next_offset - 1
                      INTO v_cp_id, v_cp_type, v_newest
                      FROM event_streaming.streams s
                     WHERE s.stream_name = p_checkpoint_streams[v_c] FOR KEY SHARE;
                END IF;
                IF v_cp_id IS NULL OR (v_cp_id = ANY (v_made) AND v_newest < 0) THEN
                    v_failed := 'checkpoint_not_found';
                ELSIF v_cp_type IS DISTINCT FROM 1 AND v_cp_type IS NOT NULL THEN
                    v_failed := 'checkpoint_wrong_type';
                    v_fail_type := v_cp_type;
                ELSE
                    SELECT o.committed_offset INTO v_committed
                      FROM event_streaming.consumer_offsets o
                     WHERE o.stream_id = v_cp_id
                       AND o.consumer_group = p_checkpoint_groups[v_c];
                END IF;
            END IF;
            IF v_failed IS NULL AND v_committed >= p_checkpoint_offsets[v_c] THEN
                v_failed := 'checkpoint_exists';
                v_fail_off := v_committed;
            ELSIF v_failed IS NULL AND p_checkpoint_offsets[v_c] > v_newest THEN
                v_failed := 'checkpoint_out_of_range';
                v_fail_off := v_newest;
            END IF;
        END IF;

        IF v_failed IS NULL THEN
            v_wrong := false;
            FOR v_k IN v_first .. v_last LOOP
                IF p_expected[v_k] IS NOT NULL
                   AND p_expected[v_k] <> v_app_next[v_k - v_first + 1] - 1 THEN
                    v_wrong := true;
                END IF;
            END LOOP;
            IF v_wrong THEN
                -- A retry of a call that went in still succeeds, whatever came after.
                IF v_count > 0 THEN
                    SELECT * INTO v_repeat FROM event_streaming.repeated_call(
                        v_app_ids, p_event_append[v_ev_first : v_ev_last], p_event_ids[v_ev_first : v_ev_last],
                        v_first - 1);
                END IF;
                IF v_count > 0 AND v_repeat.exact THEN
                    v_failed := 'repeat';
                ELSIF v_count > 0 AND v_repeat.matches > 0 THEN
                    v_failed := 'duplicate';
                ELSE
                    v_failed := 'wrong_offset';
                END IF;
            END IF;
        END IF;

        IF v_failed IS NULL AND v_count > 0 THEN
            IF v_head IS NULL THEN
                -- The head, once for the group, last of the locks: from here to the
                -- commit, appends go one group at a time.
                SELECT h.last_position INTO v_head FROM event_streaming.log_head h FOR UPDATE;
            END IF;
            -- Taken after the locks: timestamps never go backwards in offset order.
            v_now := clock_timestamp();
            WITH inserted AS (
                INSERT INTO event_streaming.events (
                    stream_id, stream_offset, event_id, event_type, content_type, data_json,
                    data_bytes, metadata, correlation_id, causation_id, created_at,
                    payload_bytes, global_position, ordering_key)
                SELECT v_app_ids[t.app - v_first + 1],
                       v_app_next[t.app - v_first + 1]
                           + row_number() OVER (PARTITION BY t.app ORDER BY t.ord) - 1,
                       t.id, t.event_type, t.content_type, t.data_json, t.data_bytes,
                       t.metadata, t.correlation_id, t.causation_id, v_now, t.payload_bytes,
                       v_head + t.ord, t.ordering_key
                  FROM unnest(p_event_append[v_ev_first : v_ev_last],
                              p_event_ids[v_ev_first : v_ev_last],
                              p_event_types[v_ev_first : v_ev_last],
                              p_content_types[v_ev_first : v_ev_last],
                              p_data_json[v_ev_first : v_ev_last],
                              p_data_bytes[v_ev_first : v_ev_last],
                              p_metadata[v_ev_first : v_ev_last],
                              p_correlation_ids[v_ev_first : v_ev_last],
                              p_causation_ids[v_ev_first : v_ev_last],
                              p_payload_bytes[v_ev_first : v_ev_last],
                              p_ordering_keys[v_ev_first : v_ev_last])
                       WITH ORDINALITY AS t(app, id, event_type, content_type, data_json,
                                            data_bytes, metadata, correlation_id,
                                            causation_id, payload_bytes, ordering_key, ord)
                ON CONFLICT (stream_id, event_id) DO NOTHING
                RETURNING 1
            )
            SELECT count(*) INTO v_inserted FROM inserted;
            IF v_inserted < v_count THEN
                -- Some id was already there: take back what this call wrote (nobody
                -- else can see it yet); its positions were never taken.
                DELETE FROM event_streaming.events
                 WHERE global_position > v_head AND global_position <= v_head + v_count;
                SELECT * INTO v_repeat FROM event_streaming.repeated_call(
                    v_app_ids, p_event_append[v_ev_first : v_ev_last],
                    p_event_ids[v_ev_first : v_ev_last], v_first - 1);
                v_failed := CASE WHEN v_repeat.exact THEN 'repeat' ELSE 'duplicate' END;
            END IF;
        END IF;

        IF v_failed = 'repeat' THEN
            RETURN QUERY SELECT v_c, r.* FROM event_streaming.call_results(
                'repeat', v_app_ids, p_event_append[v_ev_first : v_ev_last],
                p_event_ids[v_ev_first : v_ev_last], v_first - 1) r;
        ELSIF v_failed = 'duplicate' THEN
            RETURN QUERY SELECT v_c, 'duplicate'::text, NULL::integer, NULL::bigint,
                                NULL::bigint, NULL::bigint, NULL::bigint,
                                v_repeat.conflict_event_id, NULL::smallint;
        ELSIF v_failed = 'wrong_offset' THEN
            RETURN QUERY SELECT v_c, 'wrong_offset'::text, (k - v_first + 1)::integer,
                                NULL::bigint, v_app_next[k - v_first + 1] - 1, NULL::bigint,
                                NULL::bigint, NULL::uuid, NULL::smallint
                           FROM generate_series(v_first, v_last) AS k
                          WHERE p_expected[k] IS NOT NULL
                            AND p_expected[k] <> v_app_next[k - v_first + 1] - 1;
        ELSIF v_failed IS NOT NULL THEN
            RETURN QUERY SELECT v_c, v_failed, v_fail_app, NULL::bigint, v_fail_off,
                                NULL::bigint, NULL::bigint, NULL::uuid, v_fail_type;
        ELSE
            -- Written: the streams move on (in memory until the group ends), the
            -- checkpoint is committed with the writes.
            RETURN QUERY SELECT v_c, 'appended'::text, (k - v_first + 1)::integer,
                                v_app_next[k - v_first + 1],
                                v_app_next[k - v_first + 1] + c.n - 1,
                                v_head + c.lo, v_head + c.hi, NULL::uuid, 1::smallint
                           FROM generate_series(v_first, v_last) AS k
                           CROSS JOIN LATERAL (
                               SELECT count(*)::bigint AS n, min(o.ord) AS lo, max(o.ord) AS hi
                                 FROM unnest(p_event_append[v_ev_first : v_ev_last])
                                      WITH ORDINALITY AS o(app, ord)
                                WHERE o.app = k) c;
            FOR v_k IN v_first .. v_last LOOP
                v_stream := array_position(v_names, p_stream_names[v_k]);
                v_next[v_stream] := v_next[v_stream]
                    + (SELECT count(*) FROM unnest(p_event_append[v_ev_first : v_ev_last]) a
                        WHERE a = v_k);
                IF v_next[v_stream] > 0 THEN
                    v_types[v_stream] := 1;
                END IF;
            END LOOP;
            IF v_count > 0 THEN
                v_head := v_head + v_count;
            END IF;
            IF p_checkpoint_groups[v_c] IS NOT NULL THEN
                IF p_checkpoint_streams[v_c] = '$all' THEN
                    INSERT INTO event_streaming.all_consumer_offsets AS o
                           (consumer_group, committed_position)
                    VALUES (p_checkpoint_groups[v_c], p_checkpoint_offsets[v_c])
                    ON CONFLICT (consumer_group) DO UPDATE
                       SET committed_position = EXCLUDED.committed_position,
                           committed_at = clock_timestamp();
                ELSE
                    INSERT INTO event_streaming.consumer_offsets AS o
                           (stream_id, consumer_group, committed_offset)
                    VALUES (v_cp_id, p_checkpoint_groups[v_c], p_checkpoint_offsets[v_c])
                    ON CONFLICT (stream_id, consumer_group) DO UPDATE
                       SET committed_offset = EXCLUDED.committed_offset,
                           committed_at = clock_timestamp();
                END IF;
            END IF;
        END IF;
        v_first := v_last + 1;
        v_ev_first := v_ev_last + 1;
    END LOOP;

    -- The group's writes: the head, each stream's next offset and type (when it
    -- had none yet), and the streams made for calls that all failed, gone again.
    IF v_head IS NOT NULL THEN
        UPDATE event_streaming.log_head SET last_position = v_head;
    END IF;
    UPDATE event_streaming.streams s
       SET next_offset = w.next_offset, stream_type = 1
      FROM unnest(v_ids, v_next) AS w(id, next_offset)
     WHERE s.stream_id = w.id AND w.next_offset > s.next_offset;
    DELETE FROM event_streaming.streams s
     WHERE s.stream_id = ANY (v_made) AND s.next_offset = 0;
END
$$;

-- The results of an earlier run of a call (offsets and positions of its events,
-- per append, numbered from 1), for an exact repeat. Appends are numbered from
-- p_base + 1 in p_event_append.
CREATE FUNCTION event_streaming.call_results(
    p_outcome       text,
    p_stream_ids    bigint[],
    p_event_append  integer[],
    p_event_ids     uuid[],
    p_base          integer
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
    SELECT p_outcome, (b.app - p_base)::integer, min(e.stream_offset), max(e.stream_offset),
           min(e.global_position), max(e.global_position), NULL::uuid, 1::smallint
      FROM unnest(p_event_append, p_event_ids) AS b(app, id)
      JOIN event_streaming.events e
        ON e.stream_id = p_stream_ids[b.app - p_base] AND e.event_id = b.id
     GROUP BY b.app
     ORDER BY b.app
$$;

-- 004's single-stream append is now the one-stream case of append_calls.
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

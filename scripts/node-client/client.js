#!/usr/bin/env node
// A small EventStreaming client in Node.js, built from the proto file alone
// (@grpc/proto-loader loads protos/eventstreaming/v1/event_streaming.proto at run time).
//
// Usage: node client.js [HOST:PORT] [--keep]   (default localhost:50051; --keep leaves
//        the streams it made in place instead of deleting them at the end)
// Environment:
//   EVENTSTREAMING_TOKEN   bearer token, when the server requires one
//   EVENTSTREAMING_CACERT  PEM file to trust: talk TLS instead of plaintext
//
// It appends events to a new persistent stream and reads them back, then runs a
// queue round trip (enqueue, dequeue, acknowledge), checks every answer, deletes
// what it made, prints one line per step and a JSON summary as the last line.
// Exit status 0 when every step went as expected.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const crypto = require("node:crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const PROTO = path.join(PROTOS, "eventstreaming", "v1", "event_streaming.proto");
const DEADLINE_MS = 10000;

function loadService() {
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, // field names as in the proto: stream_name, event_type, ...
    longs: String, // int64 as decimal strings (no precision loss)
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [PROTOS], // google/rpc/status.proto is kept beside ours
  });
  return grpc.loadPackageDefinition(definition).eventstreaming.v1.EventStreaming;
}

function connect(address) {
  const EventStreaming = loadService();
  const caFile = process.env.EVENTSTREAMING_CACERT;
  const credentials = caFile
    ? grpc.credentials.createSsl(fs.readFileSync(caFile))
    : grpc.credentials.createInsecure();
  return new EventStreaming(address, credentials);
}

// Metadata sent with every call: the bearer token, when there is one.
function callMetadata() {
  const metadata = new grpc.Metadata();
  const token = process.env.EVENTSTREAMING_TOKEN;
  if (token) {
    metadata.set("authorization", `Bearer ${token}`);
  }
  return metadata;
}

// Promise wrapper for a unary call with a deadline.
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, callMetadata(), { deadline: Date.now() + DEADLINE_MS }, (error, response) => {
      if (error) {
        error.message = `${method}: ${error.message}`;
        reject(error);
      } else {
        resolve(response);
      }
    });
  });
}

function expect(condition, what) {
  if (!condition) {
    throw new Error(`unexpected answer: ${what}`);
  }
}

function jsonData(value) {
  return Buffer.from(JSON.stringify(value));
}

async function main() {
  const args = process.argv.slice(2);
  const keep = args.includes("--keep");
  const address = args.find((arg) => !arg.startsWith("--")) || "localhost:50051";
  const client = connect(address);
  const run = `node-${crypto.randomUUID().slice(0, 12)}`;
  const log = `${run}-log`;
  const queue = `${run}-queue`;
  const summary = { address, stream: log, queue };
  const step = (text) => console.log(`ok ${text}`);

  try {
    // -- persistent stream: append, read back -----------------------------------------
    const appended = await unary(client, "AppendToStream", {
      stream_name: log,
      expected_last_offset: "-1",
      events: [0, 1, 2].map((n) => ({
        event_type: "NodeClientTested",
        data: jsonData({ n }),
        metadata: { client: "node" },
      })),
    });
    expect(appended.first_offset === "0" && appended.last_offset === "2", `offsets ${JSON.stringify(appended)}`);
    step(`appended 3 events to ${log} at offsets ${appended.first_offset}..${appended.last_offset}`);

    const read = await unary(client, "ReadStream", { stream_name: log, from_offset: "0" });
    const numbers = read.events.map((e) => JSON.parse(Buffer.from(e.data).toString()).n);
    expect(JSON.stringify(numbers) === "[0,1,2]", `read data ${JSON.stringify(numbers)}`);
    expect(read.events.every((e, i) => e.offset === String(i) && e.metadata.client === "node"), "read offsets/metadata");
    expect(read.end_of_stream === true && read.next_offset === "3", "end of stream");
    step(`read back ${read.events.length} events, data ${JSON.stringify(numbers)}`);

    const length = await unary(client, "GetStreamLength", { stream_name: log });
    expect(length.length === "3", `length ${length.length}`);
    step(`stream length ${length.length}`);

    // -- queue round trip: enqueue, dequeue, acknowledge --------------------------------
    const enqueued = await unary(client, "Enqueue", {
      stream_name: queue,
      events: [{ event_type: "NodeJob", data: jsonData({ job: 1 }) }],
    });
    expect(enqueued.event_ids.length === 1, "one id enqueued");
    const [messageId] = enqueued.event_ids;
    step(`enqueued ${messageId}`);

    const dequeued = await unary(client, "Dequeue", {
      stream_name: queue,
      consumer_id: "node-client",
      visibility_timeout: { seconds: "30", nanos: 0 },
      wait_time: { seconds: "2", nanos: 0 },
    });
    expect(dequeued.messages.length === 1, `dequeued ${dequeued.messages.length}`);
    const message = dequeued.messages[0];
    expect(message.event.event_id === messageId && message.delivery_attempt === 1, "the message, first delivery");
    expect(JSON.parse(Buffer.from(message.event.data).toString()).job === 1, "message data");
    step(`dequeued ${message.event.event_id} (attempt ${message.delivery_attempt})`);

    const acked = await unary(client, "Acknowledge", {
      stream_name: queue,
      consumer_id: "node-client",
      event_ids: [messageId],
    });
    expect(acked.acknowledged.length === 1 && acked.failed.length === 0, `ack ${JSON.stringify(acked)}`);
    step(`acknowledged ${messageId}`);

    const meta = await unary(client, "GetStreamMetadata", { stream_name: queue });
    expect(meta.stream_type === "STREAM_TYPE_EPHEMERAL", `type ${meta.stream_type}`);
    expect(meta.pending_count === "0" && meta.in_flight_count === "0", "queue empty after ack");
    step("queue is empty");

    Object.assign(summary, {
      ok: true,
      appended: 3,
      read: numbers,
      enqueued: 1,
      acknowledged: acked.acknowledged,
    });
  } finally {
    if (!keep) {
      for (const name of [log, queue]) {
        await unary(client, "DeleteStream", { stream_name: name }).catch(() => {});
      }
    }
    client.close();
  }
  console.log(JSON.stringify(summary));
}

main().catch((error) => {
  const code = error.code !== undefined ? ` (status ${grpc.status[error.code] || error.code})` : "";
  console.error(`node client failed${code}: ${error.message}`);
  console.log(JSON.stringify({ ok: false, error: error.message }));
  process.exit(1);
});

// Feeds server frames to the bundled client and prints the requests it sends back, so that
// a Python test can run the client's own logic on frames a real server made. Not a test file
// (node --test only runs *.test.mjs here).
// Usage: node tests/js/replay.mjs < frames.json   (a JSON array of server frames, hello first)
import { setup } from "./fakes.mjs";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { ws } = setup();
const w = ws();
w.serverOpen();
for (const frame of JSON.parse(input)) w.serverSend(frame);
const requests = w.frames().filter((f) => f && f.type !== "ping" && f.type !== "pong");
process.stdout.write(JSON.stringify(requests) + "\n");

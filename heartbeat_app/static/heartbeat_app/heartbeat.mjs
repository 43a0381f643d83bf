// heartbeat.mjs: HeartbeatSocket as an ES module. The class itself lives in heartbeat.js (a
// classic script that sets globalThis.HeartbeatSocket), so there is one source and no build.
import "./heartbeat.js";

export const HeartbeatSocket = globalThis.HeartbeatSocket;
export default HeartbeatSocket;

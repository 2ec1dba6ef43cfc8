// End-to-end encryption over Simplified Sliding Sync (MSC4186) with matrix-js-sdk 43 and its Rust crypto: user1's
// client syncs ONLY through sliding sync (startClient({slidingSync}), so its room keys arrive by the to_device
// extension and its device list changes by the e2ee extension); user2's client uses /sync v2. user2 sends into an
// encrypted room; user1 decrypts; then user1 sends and user2 decrypts. One JSON line per step on stdout.
//
// Usage: node sliding_sync_e2ee.mjs --base-url URL --user1 U --user2 U --password PW
// Crypto state in memory (useIndexedDB: false). Each step has a timeout; so has the run.

import process from "node:process";

for (const name of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[name] = (...args) => process.stderr.write(args.map((a) => String(a?.message ?? a)).join(" ") + "\n");
}

const sdk = await import("matrix-js-sdk");
const { SlidingSync } = await import("matrix-js-sdk/lib/sliding-sync.js");
const { ClientEvent, MemoryStore, RoomEvent, SyncState, MatrixEventEvent } = sdk;

function arg(name) {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : undefined;
}

const BASE_URL = arg("base-url");
const PASSWORD = arg("password");
const STEP_TIMEOUT_MS = 20000;
setTimeout(() => {
    emit("global_timeout", false, "the run took over 100 s");
    process.exit(2);
}, 100000).unref();

function emit(step, ok, detail = "") {
    process.stdout.write(JSON.stringify({ step, ok, detail: String(detail) }) + "\n");
}

function waitFor(client, check, what) {
    return new Promise((resolve, reject) => {
        const events = [ClientEvent.Sync, RoomEvent.Timeline, MatrixEventEvent.Decrypted, ClientEvent.Event, ClientEvent.Room];
        const listener = () => attempt();
        const done = (fn, value) => {
            for (const event of events) client.off(event, listener);
            clearTimeout(timer);
            clearInterval(poll);
            fn(value);
        };
        const attempt = () => {
            Promise.resolve().then(check).then((value) => value && done(resolve, value), (err) => done(reject, err));
        };
        const timer = setTimeout(() => done(reject, new Error(`timed out waiting for ${what}`)), STEP_TIMEOUT_MS);
        const poll = setInterval(attempt, 200);
        for (const event of events) client.on(event, listener);
        attempt();
    });
}

async function step(name, fn) {
    try {
        emit(name, true, await fn());
        return true;
    } catch (err) {
        emit(name, false, err?.stack ?? err);
        return false;
    }
}

async function start(user, sliding) {
    const tmp = sdk.createClient({ baseUrl: BASE_URL });
    const creds = await tmp.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user }, password: PASSWORD });
    const client = sdk.createClient({ baseUrl: BASE_URL, userId: creds.user_id, deviceId: creds.device_id,
                                      accessToken: creds.access_token, store: new MemoryStore(), timelineSupport: true });
    await client.initRustCrypto({ useIndexedDB: false });
    const opts = { initialSyncLimit: 20 };
    if (sliding) {
        opts.slidingSync = new SlidingSync(BASE_URL,
            new Map([["all", { ranges: [[0, 20]], timeline_limit: 20, required_state: [["*", "*"]] }]]),
            { timeline_limit: 20, required_state: [["*", "*"]] }, client, 5000);
    }
    const ready = new Promise((resolve) => client.on(ClientEvent.Sync, (state) => {
        if (state === SyncState.Prepared || state === SyncState.Syncing) resolve();
    }));
    await client.startClient(opts);
    await Promise.race([ready, new Promise((_, rej) => setTimeout(() => rej(new Error("no first sync")), STEP_TIMEOUT_MS))]);
    return { client, userId: creds.user_id };
}

function clearBody(client, roomId, eventId) {
    const ev = client.getRoom(roomId)?.getLiveTimeline().getEvents().find((e) => e.getId() === eventId);
    if (!ev || ev.isDecryptionFailure() || ev.isBeingDecrypted() || ev.getType() !== "m.room.message") return undefined;
    return ev.getContent().body;
}

let user1, user2, roomId;
const ok = await step("start_sliding_and_v2_clients", async () => {
    user1 = await start(arg("user1"), true);
    user2 = await start(arg("user2"), false);
    return "user1 on sliding sync, user2 on /sync v2";
}) && await step("encrypted_room", async () => {
    ({ room_id: roomId } = await user2.client.createRoom({
        preset: "private_chat", invite: [user1.userId], name: "e2ee over sliding sync",
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    }));
    await waitFor(user1.client, () => user1.client.getRoom(roomId)?.getMyMembership() === "invite", "user1's invite");
    await user1.client.joinRoom(roomId);
    await waitFor(user2.client, () => user2.client.getRoom(roomId)?.getMember(user1.userId)?.membership === "join", "user1 joined");
    await waitFor(user1.client, () => user1.client.getRoom(roomId)?.getMyMembership() === "join", "user1 sees the join");
    return roomId;
}) && await step("sliding_client_decrypts", async () => {
    const { event_id } = await user2.client.sendMessage(roomId, { msgtype: "m.text", body: "secret for the phone" });
    const got = await waitFor(user1.client, () => clearBody(user1.client, roomId, event_id), "user1 to decrypt");
    if (got !== "secret for the phone") throw new Error(`decrypted ${got}`);
    return "decrypted";
}) && await step("v2_client_decrypts_the_sliding_client", async () => {
    await waitFor(user1.client, async () => await user1.client.getCrypto().isEncryptionEnabledInRoom(roomId), "user1 knows the room is encrypted");
    const { event_id } = await user1.client.sendMessage(roomId, { msgtype: "m.text", body: "reply from the phone" });
    const got = await waitFor(user2.client, () => clearBody(user2.client, roomId, event_id), "user2 to decrypt");
    if (got !== "reply from the phone") throw new Error(`decrypted ${got}`);
    return "decrypted";
});
user1?.client.stopClient();
user2?.client.stopClient();
process.exit(ok ? 0 : 1);

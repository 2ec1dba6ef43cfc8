// End-to-end encryption with matrix-js-sdk 43 and its Rust crypto (initRustCrypto: Element Web's engine, the
// @matrix-org/matrix-sdk-crypto-wasm that comes with the SDK) against a homeserver: two users in an encrypted room
// decrypt each other's messages; a third device of user1 logged in later decrypts new messages; once that device is
// deleted, user2's client no longer sends it room keys. One JSON line per step on stdout: {"step", "ok", "detail"};
// the last line is {"requests": [...]}.
//
// Usage: node e2ee.mjs --base-url URL --user1 U --password1 P --user2 U --password2 P [--step-timeout MS]
//        [--base-url2 URL]  (user2 on another homeserver: the same steps across federation; user ids are then full
//        ids, e.g. @sam:synapse.test, and user2's device-list news of user1 comes over federation)
// Crypto state is in memory (useIndexedDB: false): Node has no IndexedDB. Each step has a timeout; so has the run.

import process from "node:process";

for (const name of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[name] = (...args) => {
        process.stderr.write(args.map((a) => (typeof a === "string" ? a : safeString(a))).join(" ") + "\n");
    };
}

function safeString(value) {
    if (value instanceof Error) return `${value.name}: ${value.message}`;
    try {
        return JSON.stringify(value);
    } catch {
        return String(value);
    }
}

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
const { ClientEvent, MemoryStore, RoomEvent, SyncState, MatrixEventEvent } = sdk;

function arg(name, fallback) {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const BASE_URL = arg("base-url");
const USERS = [
    { name: "user1", login: arg("user1"), password: arg("password1"), baseUrl: BASE_URL },
    { name: "user2", login: arg("user2"), password: arg("password2"), baseUrl: arg("base-url2", BASE_URL) },
];
const FEDERATED = USERS[1].baseUrl !== BASE_URL;
const STEP_TIMEOUT_MS = Number(arg("step-timeout", "20000"));
logger.setLevel(arg("log-level", "warn"), false);

if (!BASE_URL || USERS.some((u) => !u.login || !u.password)) {
    process.stderr.write("usage: e2ee.mjs --base-url URL --user1 U --password1 P --user2 U --password2 P\n");
    process.exit(2);
}

const requests = []; // {who, method, path, status, errcode, body (sendToDevice only)}
const passed = new Set();

function emit(step, ok, detail) {
    process.stdout.write(JSON.stringify({ step, ok, detail }) + "\n");
}

function recordingFetch(who) {
    return async (input, init = {}) => {
        const url = new URL(input instanceof Request ? input.url : String(input));
        const method = (init.method ?? "GET").toUpperCase();
        const entry = { who, method, path: url.pathname, status: null, errcode: null };
        if (url.pathname.includes("/sendToDevice/") && typeof init.body === "string") entry.body = init.body;
        requests.push(entry);
        try {
            const response = await globalThis.fetch(input, init);
            entry.status = response.status;
            if (response.status >= 400) {
                entry.errcode = await response.clone().json().then((b) => b?.errcode ?? null, () => null);
            }
            return response;
        } catch (err) {
            entry.status = 0;
            entry.errcode = `network: ${err?.cause?.code ?? err?.name ?? err}`;
            throw err;
        }
    };
}

function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function assert(condition, message) {
    if (!condition) throw new Error(message);
}

/** Resolve when check() gives a truthy value; re-checked on each sync, timeline event and decryption of `client`. */
function waitFor(client, check, what) {
    return new Promise((resolve, reject) => {
        const events = [ClientEvent.Sync, RoomEvent.Timeline, MatrixEventEvent.Decrypted, ClientEvent.Event];
        const listener = () => attempt();
        const done = (fn, value) => {
            for (const event of events) client.off(event, listener);
            clearTimeout(timer);
            fn(value);
        };
        const attempt = () => {
            Promise.resolve().then(check).then((value) => value && done(resolve, value), (err) => done(reject, err));
        };
        const timer = setTimeout(() => done(reject, new Error(`timed out waiting for ${what}`)), STEP_TIMEOUT_MS * 0.8);
        for (const event of events) client.on(event, listener);
        attempt();
    });
}

async function step(name, needs, fn) {
    const missing = needs.filter((n) => !passed.has(n));
    if (missing.length) {
        emit(name, false, `not run: needs ${missing.join(", ")}`);
        return;
    }
    const mark = requests.length;
    try {
        const detail = await withTimeout(Promise.resolve().then(fn), STEP_TIMEOUT_MS, name);
        passed.add(name);
        emit(name, true, detail ?? "");
    } catch (err) {
        const failed = requests.slice(mark).filter((r) => r.status !== null && (r.status >= 400 || r.status === 0));
        let detail = err?.httpStatus ? `${err.httpStatus} ${err.errcode ?? ""} ${err.message}` : String(err?.message ?? err);
        if (failed.length) detail += `; failed requests: ${[...new Set(failed.map((r) => `${r.who} ${r.method} ${r.path} -> ${r.status} ${r.errcode ?? ""}`))].join(", ")}`;
        emit(name, false, detail);
    }
}

async function login(u, who) {
    const tmp = sdk.createClient({ baseUrl: u.baseUrl, fetchFn: recordingFetch(who) });
    return tmp.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user: u.login }, password: u.password });
}

/** A logged-in client with Rust crypto, started and PREPARED. */
async function startDevice(u, who) {
    const creds = await login(u, who);
    const client = sdk.createClient({
        baseUrl: u.baseUrl, userId: creds.user_id, deviceId: creds.device_id, accessToken: creds.access_token,
        fetchFn: recordingFetch(who), store: new MemoryStore(), timelineSupport: true,
    });
    await client.initRustCrypto({ useIndexedDB: false });
    const prepared = new Promise((resolve, reject) => {
        client.on(ClientEvent.Sync, (state) => {
            if (state === SyncState.Prepared || state === SyncState.Syncing) resolve();
            if (state === SyncState.Error) reject(new Error("sync error at start"));
        });
    });
    await client.startClient({ initialSyncLimit: 20 });
    await prepared;
    return { who, client, login: u, userId: creds.user_id, deviceId: creds.device_id, accessToken: creds.access_token };
}

/** The decrypted body of the event `eventId` as `device` sees it (undefined while it cannot decrypt). */
function clearBody(device, rid, eventId) {
    const ev = device.client.getRoom(rid)?.getLiveTimeline().getEvents().find((e) => e.getId() === eventId);
    if (!ev || ev.isDecryptionFailure() || ev.isBeingDecrypted() || ev.getType() !== "m.room.message") return undefined;
    return ev.getContent().body;
}

async function sendAndDecrypt(sender, receivers, rid, body) {
    const { event_id: eventId } = await sender.client.sendMessage(rid, { msgtype: "m.text", body });
    assert(eventId?.startsWith("$"), `no event id: ${eventId}`);
    for (const receiver of receivers) {
        const got = await waitFor(receiver.client, () => clearBody(receiver, rid, eventId), `${receiver.who} to decrypt "${body}"`);
        assert(got === body, `${receiver.who} decrypted ${JSON.stringify(got)}, not ${JSON.stringify(body)}`);
    }
    return eventId;
}

let user1, user2, user1b, roomId;

async function main() {
    await step("start_with_rust_crypto", [], async () => {
        user1 = await startDevice(USERS[0], "user1");
        user2 = await startDevice(USERS[1], "user2");
        for (const d of [user1, user2]) {
            const crypto = d.client.getCrypto();
            assert(crypto, `${d.who}: no crypto`);
            const keys = await crypto.getOwnDeviceKeys();
            assert(keys.ed25519 && keys.curve25519, `${d.who}: no device keys`);
        }
        // each device's identity keys are on the server, as the other user sees them
        const info = await user2.client.getCrypto().getUserDeviceInfo([user1.userId], true);
        assert(info.get(user1.userId)?.has(user1.deviceId), `user2 does not see user1's device ${user1.deviceId}`);
        return `devices ${user1.deviceId}, ${user2.deviceId}`;
    });

    await step("encrypted_room", ["start_with_rust_crypto"], async () => {
        // across federation the invite is its own request (the hub's createRoom invites local users only)
        const created = await user1.client.createRoom({
            preset: "private_chat", invite: FEDERATED ? [] : [user2.userId], name: "e2ee",
            initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
        });
        roomId = created.room_id;
        if (FEDERATED) await user1.client.invite(roomId, user2.userId);
        await waitFor(user2.client, () => user2.client.getRoom(roomId)?.getMyMembership() === "invite", "user2's invite");
        await user2.client.joinRoom(roomId);
        await waitFor(user1.client, () => user1.client.getRoom(roomId)?.getMember(user2.userId)?.membership === "join", "user2 joined, as user1 sees it");
        const encrypted = await user1.client.getCrypto().isEncryptionEnabledInRoom(roomId);
        assert(encrypted, "the room is not encrypted for user1");
        return roomId;
    });

    await step("each_decrypts_the_other", ["encrypted_room"], async () => {
        await sendAndDecrypt(user1, [user2], roomId, "hello from user1, encrypted");
        await sendAndDecrypt(user2, [user1], roomId, "hello back from user2, encrypted");
        const raw = requests.filter((r) => r.method === "PUT" && r.path.includes("/send/"));
        assert(raw.every((r) => r.path.includes("/send/m.room.encrypted/")), "a message went out unencrypted");
        return "both directions decrypted";
    });

    await step("third_device_reads_new_messages", ["each_decrypts_the_other"], async () => {
        user1b = await startDevice(USERS[0], "user1b");
        await waitFor(user2.client, async () => {
            const info = await user2.client.getCrypto().getUserDeviceInfo([user1.userId]);
            return info.get(user1.userId)?.has(user1b.deviceId);
        }, "user2 to learn user1's new device (device_lists.changed)");
        await sendAndDecrypt(user2, [user1b, user1], roomId, "for all of user1's devices");
        return `new device ${user1b.deviceId}`;
    });

    await step("deleted_device_gets_no_keys", ["third_device_reads_new_messages"], async () => {
        const gone = user1b.deviceId;
        user1b.client.stopClient();
        const auth = { type: "m.login.password", identifier: { type: "m.id.user", user: USERS[0].login }, password: USERS[0].password };
        await user1.client.deleteDevice(gone, auth);
        await waitFor(user2.client, async () => {
            const info = await user2.client.getCrypto().getUserDeviceInfo([user1.userId]);
            return info.get(user1.userId) && !info.get(user1.userId).has(gone);
        }, "user2 to see user1's deleted device go (device_lists.changed)");
        // force a new megolm session so keys must be sent again, to the devices user2 knows now
        await user2.client.getCrypto().forceDiscardSession(roomId);
        const mark = requests.length;
        await sendAndDecrypt(user2, [user1], roomId, "after the deletion");
        const toDevice = requests.slice(mark).filter((r) => r.who === "user2" && r.path.includes("/sendToDevice/"));
        assert(toDevice.length, "user2 sent no room key at all after the session was discarded");
        assert(!toDevice.some((r) => r.body?.includes(`"${gone}"`)), `user2 still sent keys to the deleted device ${gone}`);
        return `${toDevice.length} to-device request(s), none for ${gone}`;
    });

    await step("no_unknown_endpoints", [], async () => {
        const bad = requests.filter((r) => r.status === 404 && r.errcode === "M_UNRECOGNIZED");
        // key backup and cross-signing are another part of issue 14 (room_keys, keys/device_signing, keys/signatures);
        // unstable paths (MSC4143's rtc/transports at start) are probes the SDK makes of any server
        const known = (r) => r.path.includes("/unstable/") || r.path.includes("/room_keys/") || r.path.includes("/keys/device_signing") || r.path.includes("/keys/signatures");
        const unexpected = bad.filter((r) => !known(r));
        assert(!unexpected.length, `unrecognized: ${[...new Set(unexpected.map((r) => `${r.method} ${r.path}`))].join(", ")}`);
        return `${requests.length} requests`;
    });
}

const globalTimer = setTimeout(() => {
    emit("global_timeout", false, "the run took too long");
    process.exit(3);
}, STEP_TIMEOUT_MS * 8);
try {
    await main();
} catch (err) {
    emit("script_error", false, String(err?.stack ?? err));
}
clearTimeout(globalTimer);
for (const d of [user1, user2, user1b]) d?.client.stopClient();
process.stdout.write(JSON.stringify({ requests: requests.map(({ body, ...r }) => r) }) + "\n");
process.exit(0);

// Drive matrix-js-sdk 43's SlidingSync class (Simplified Sliding Sync, MSC4186) against a homeserver and print one
// JSON line per step on stdout: {"step", "ok", "detail"}.
//
// Usage: node sliding_sync.mjs --base-url URL --user1 LOCALPART --user2 LOCALPART --password PW
// Steps: a list of rooms sorted by recency (bump_stamp), a new message bumping the oldest room to the top within
// 1 s, an invite appearing in the list, a room subscription with required state. Each step has its own timeout and
// the whole run a global one: the script never hangs. No crypto, memory store, Node's own fetch.

import process from "node:process";

for (const name of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[name] = (...args) => process.stderr.write(args.map((a) => String(a?.message ?? a)).join(" ") + "\n");
}

const sdk = await import("matrix-js-sdk");
const { SlidingSync, SlidingSyncEvent, SlidingSyncState } = await import("matrix-js-sdk/lib/sliding-sync.js");

function arg(name) {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : undefined;
}

const BASE_URL = arg("base-url");
const PASSWORD = arg("password");
const STEP_TIMEOUT_MS = 10000;
setTimeout(() => {
    emit("global_timeout", false, "the run took over 90 s");
    process.exit(2);
}, 90000).unref();

function emit(step, ok, detail = "") {
    process.stdout.write(JSON.stringify({ step, ok, detail: String(detail) }) + "\n");
}

async function login(user) {
    const resp = await fetch(`${BASE_URL}/_matrix/client/v3/login`, {
        method: "POST",
        body: JSON.stringify({ type: "m.login.password", identifier: { type: "m.id.user", user }, password: PASSWORD }),
    });
    const body = await resp.json();
    if (resp.status !== 200) throw new Error(`login ${user}: ${JSON.stringify(body)}`);
    return sdk.createClient({ baseUrl: BASE_URL, accessToken: body.access_token, userId: body.user_id,
                              deviceId: body.device_id });
}

// Resolve when `check()` holds, re-checked on each room data event; reject after the step timeout.
function waitFor(check, what) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            sliding.off(SlidingSyncEvent.RoomData, onData);
            reject(new Error(`timed out waiting for ${what}`));
        }, STEP_TIMEOUT_MS);
        const onData = () => {
            const value = check();
            if (value) {
                clearTimeout(timer);
                sliding.off(SlidingSyncEvent.RoomData, onData);
                resolve(value);
            }
        };
        sliding.on(SlidingSyncEvent.RoomData, onData);
        onData();
    });
}

async function step(name, fn) {
    try {
        emit(name, true, await fn());
    } catch (err) {
        emit(name, false, err?.stack ?? err);
    }
}

const alice = await login(arg("user1"));
const bob = await login(arg("user2"));

// Five rooms, each with a message, created oldest first: the list's order is r4, r3, r2, r1, r0.
const rooms = [];
for (let i = 0; i < 5; i++) {
    const { room_id } = await alice.createRoom({ name: `r${i}`, topic: `topic ${i}` });
    await alice.sendTextMessage(room_id, `hello ${i}`);
    rooms.push(room_id);
}

const seen = new Map(); // room id -> the latest room data (bump_stamp kept from the newest that had one)
let sliding;
sliding = new SlidingSync(
    BASE_URL,
    new Map([["all", { ranges: [[0, 2]], timeline_limit: 1, required_state: [["m.room.name", ""]] }]]),
    { timeline_limit: 1, required_state: [["m.room.topic", ""]] },
    alice,
    10000,
);
sliding.on(SlidingSyncEvent.RoomData, (roomId, data) => {
    const before = seen.get(roomId) ?? {};
    seen.set(roomId, { ...before, ...data, bump_stamp: data.bump_stamp ?? before.bump_stamp, updates: (before.updates ?? 0) + 1 });
});
const order = () => [...seen.entries()].filter(([, d]) => d.bump_stamp !== undefined && !d.invite_state)
    .sort((a, b) => b[1].bump_stamp - a[1].bump_stamp).map(([id]) => id);
const firstComplete = new Promise((resolve) => {
    const onLife = (state) => {
        if (state === SlidingSyncState.Complete) {
            sliding.off(SlidingSyncEvent.Lifecycle, onLife);
            resolve();
        }
    };
    sliding.on(SlidingSyncEvent.Lifecycle, onLife);
});
sliding.start();

await step("list_sorted_by_recency", async () => {
    await Promise.race([firstComplete, new Promise((_, rej) => setTimeout(() => rej(new Error("no answer")), STEP_TIMEOUT_MS))]);
    const want = [rooms[4], rooms[3], rooms[2]];
    const got = order();
    if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`order ${JSON.stringify(got)} != ${JSON.stringify(want)}`);
    const count = sliding.getListData("all")?.joinedCount;
    if (count !== 5) throw new Error(`count ${count} != 5`);
    const names = want.map((id) => seen.get(id).name);
    if (JSON.stringify(names) !== JSON.stringify(["r4", "r3", "r2"])) throw new Error(`names ${names}`);
    return `order ${names.join(",")}, count ${count}`;
});

await step("new_message_bumps_room_to_top", async () => {
    const started = Date.now();
    await alice.sendTextMessage(rooms[0], "bump");
    await waitFor(() => order()[0] === rooms[0], "r0 at the top");
    const took = Date.now() - started;
    const timeline = seen.get(rooms[0]).timeline ?? [];
    if (!timeline.some((ev) => ev.content?.body === "bump")) throw new Error("the bump message is not in the timeline");
    if (took > 1000) throw new Error(`took ${took} ms`);
    return `${took} ms`;
});

await step("invite_appears", async () => {
    const { room_id } = await bob.createRoom({ name: "from bob" });
    await bob.invite(room_id, alice.getUserId());
    const data = await waitFor(() => seen.get(room_id)?.invite_state && seen.get(room_id), "the invite");
    const named = data.invite_state.some((ev) => ev.type === "m.room.name" && ev.content?.name === "from bob");
    if (!named) throw new Error(`invite_state ${JSON.stringify(data.invite_state)}`);
    const count = sliding.getListData("all")?.joinedCount;
    if (count !== 6) throw new Error(`count ${count} != 6`);
    return "invite_state has the room name";
});

await step("room_subscription_with_required_state", async () => {
    const target = rooms[1]; // outside the list's range now
    const before = seen.get(target)?.updates ?? 0;
    sliding.modifyRoomSubscriptions(new Set([target]));
    const data = await waitFor(() => (seen.get(target)?.updates ?? 0) > before && seen.get(target), "the subscription");
    const topic = (data.required_state ?? []).find((ev) => ev.type === "m.room.topic");
    if (topic?.content?.topic !== "topic 1") throw new Error(`required_state ${JSON.stringify(data.required_state)}`);
    return "m.room.topic delivered";
});

sliding.stop();
process.exit(0);

// Drive two matrix-js-sdk clients (the engine of Element Web) against a homeserver the way Element does at
// start-up and in a room, and print one JSON line per step on stdout: {"step", "ok", "detail"}.
//
// Usage: node element_start.mjs --base-url URL --user1 alice --password1 PW --user2 bob --password2 PW
//        (or env MX_BASE_URL, MX_USER1, MX_PASSWORD1, MX_USER2, MX_PASSWORD2; MX_STEP_TIMEOUT_MS, default 15000;
//        MX_LOG_LEVEL for the SDK's own log on stderr, default "info").
// The last line is {"requests": [...]}: every HTTP request the SDK made (method, path, status, errcode), so a failing
// step can be traced to the endpoint that answered wrong. Each step has its own timeout and the whole run a global one:
// the script never hangs. No crypto (initRustCrypto is not called), memory store, Node's own fetch.

import process from "node:process";

// The SDK logs through console.*: keep stdout for the JSON lines only.
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
const {
    ClientEvent,
    Direction,
    EventTimelineSet,
    EventType,
    MemoryStore,
    NotificationCountType,
    PendingEventOrdering,
    ReceiptType,
    RoomEvent,
    RoomMemberEvent,
    SyncState,
    ThreadEvent,
    ThreadFilterType,
    AutoDiscovery,
} = sdk;

function arg(name, envName, fallback) {
    const i = process.argv.indexOf(`--${name}`);
    if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
    return process.env[envName] ?? fallback;
}

const BASE_URL = arg("base-url", "MX_BASE_URL");
const USERS = [
    { name: "user1", login: arg("user1", "MX_USER1"), password: arg("password1", "MX_PASSWORD1") },
    { name: "user2", login: arg("user2", "MX_USER2"), password: arg("password2", "MX_PASSWORD2") },
];
const STEP_TIMEOUT_MS = Number(arg("step-timeout", "MX_STEP_TIMEOUT_MS", "15000"));
// Diagnosis only (never in the test suite): answer a 404 GET /pushrules/ with an empty rule set so the later steps
// can run against a server without push rules.
const STUB_PUSHRULES = process.argv.includes("--stub-pushrules");
const GLOBAL_TIMEOUT_MS = Number(arg("global-timeout", "MX_GLOBAL_TIMEOUT_MS", String(STEP_TIMEOUT_MS * 40)));
logger.setLevel(arg("log-level", "MX_LOG_LEVEL", "info"), false);

if (!BASE_URL || USERS.some((u) => !u.login || !u.password)) {
    process.stderr.write("usage: element_start.mjs --base-url URL --user1 U --password1 P --user2 U --password2 P\n");
    process.exit(2);
}

// ---------------------------------------------------------------------------------------------------------------
// Output, HTTP log, waiting

const requests = []; // {who, method, path, status, errcode}
const passed = new Set();

function emit(step, ok, detail) {
    process.stdout.write(JSON.stringify({ step, ok, detail }) + "\n");
}

function recordingFetch(who, syncSink) {
    return async (input, init = {}) => {
        const url = new URL(input instanceof Request ? input.url : String(input)); // the SDK passes URL objects
        const method = (init.method ?? "GET").toUpperCase();
        const entry = { who, method, path: url.pathname, status: null, errcode: null }; // null: in flight
        requests.push(entry);
        try {
            let response = await globalThis.fetch(input, init);
            entry.status = response.status;
            if (STUB_PUSHRULES && response.status === 404 && method === "GET" && url.pathname.endsWith("/pushrules/")) {
                entry.errcode = "stubbed";
                response = new Response(JSON.stringify({ global: {} }), { headers: { "content-type": "application/json" } });
            }
            // Read a copy: the SDK reads the original.
            if (response.status >= 400) {
                entry.errcode ??= await response.clone().json().then((b) => b?.errcode ?? null, () => null);
            } else if (url.pathname.endsWith("/sync")) {
                response.clone().json().then((body) => syncSink?.(body), () => {});
            }
            return response;
        } catch (err) {
            entry.status = 0;
            entry.errcode = `network: ${err?.cause?.code ?? err?.name ?? err}`;
            throw err;
        }
    };
}

function describeRequest(r) {
    return `${r.who} ${r.method} ${r.path} -> ${r.status ?? "in flight"}${r.errcode ? " " + r.errcode : ""}`;
}

function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolve when check() returns a truthy value; re-checked after each of `events` on `emitter` and after every
 * sync response of `client` (every change from the server arrives through /sync). Rejects when the step times out. */
function waitFor(client, check, what, extra = []) {
    return new Promise((resolve, reject) => {
        const listeners = [];
        const done = (fn, value) => {
            for (const [emitter, event, listener] of listeners) emitter.off(event, listener);
            clearTimeout(timer);
            fn(value);
        };
        const attempt = () => {
            try {
                const value = check();
                if (value) done(resolve, value);
            } catch (err) {
                done(reject, err);
            }
        };
        // Shorter than the step's own timeout, so the step reports what it was waiting for.
        const timer = setTimeout(() => done(reject, new Error(`timed out waiting for ${typeof what === "function" ? what() : what}`)), STEP_TIMEOUT_MS * 0.8);
        for (const [emitter, event] of [[client, ClientEvent.Sync], ...extra]) {
            const listener = () => attempt();
            emitter.on(event, listener);
            listeners.push([emitter, event, listener]);
        }
        attempt();
    });
}

function assert(condition, message) {
    if (!condition) throw new Error(message);
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
        if (failed.length) {
            const counts = new Map();
            for (const r of failed.map(describeRequest)) counts.set(r, (counts.get(r) ?? 0) + 1);
            const listed = [...counts].map(([r, n]) => (n > 1 ? `${r} (x${n})` : r));
            detail += `; failed requests: ${listed.join(", ")}`;
        }
        emit(name, false, detail);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// State shared by the steps

const clients = []; // {name, client, userId, deviceId, accessToken, unread: Map(roomId -> unread_notifications)}
let roomId = null;
const sent = {}; // event ids by role

function makeClient(u, creds) {
    const unread = new Map();
    const client = sdk.createClient({
        baseUrl: BASE_URL,
        userId: creds.user_id,
        deviceId: creds.device_id,
        accessToken: creds.access_token,
        fetchFn: recordingFetch(u.name, (body) => {
            for (const [rid, joined] of Object.entries(body?.rooms?.join ?? {})) {
                if (joined.unread_notifications) unread.set(rid, joined.unread_notifications);
            }
        }),
        store: new MemoryStore(),
        timelineSupport: true, // as Element's MatrixClientPeg
    });
    return { name: u.name, client, userId: creds.user_id, deviceId: creds.device_id, unread, login: u };
}

function timelineHas(client, rid, eventId) {
    const room = client.getRoom(rid);
    return room?.getLiveTimeline().getEvents().find((e) => e.getId() === eventId);
}

async function sendAndSee(sender, receiver, content, what) {
    const { event_id: eventId } = await sender.client.sendMessage(roomId, content);
    assert(eventId?.startsWith("$"), `send gave no event id: ${eventId}`);
    const room = () => receiver.client.getRoom(roomId);
    const seen = await waitFor(
        receiver.client,
        () => room() && timelineHas(receiver.client, roomId, eventId),
        `${receiver.name} to see ${what} in the room timeline`,
        [[receiver.client, RoomEvent.Timeline]],
    );
    assert(seen.getContent().body === content.body, `body differs: ${seen.getContent().body}`);
    assert(seen.getSender() === sender.userId, `sender differs: ${seen.getSender()}`);
    return eventId;
}

// ---------------------------------------------------------------------------------------------------------------
// Steps

const [A, B] = [0, 1];

async function main() {
    await step("versions", [], async () => {
        const tmp = sdk.createClient({ baseUrl: BASE_URL, fetchFn: recordingFetch("anon") });
        const res = await tmp.getVersions();
        assert(Array.isArray(res.versions) && res.versions.length, "no versions array");
        // matrix-js-sdk 43 refuses servers older than v1.5 (Element shows 'Your homeserver is too old').
        const ok = res.versions.some((v) => /^v1\.(\d+)$/.test(v) && Number(v.slice(3)) >= 5);
        assert(ok, `no version >= v1.5 in ${res.versions}`);
        return `versions ${res.versions.join(",")}`;
    });

    await step("well_known", [], async () => {
        // Element's login page: GET {hs}/.well-known/matrix/client, then it validates the advertised base URL
        // (AutoDiscovery calls /versions on it).
        const response = await recordingFetch("anon")(`${BASE_URL}/.well-known/matrix/client`);
        assert(response.status === 200, `/.well-known/matrix/client answered ${response.status}`);
        const body = await response.json();
        const base = body?.["m.homeserver"]?.base_url;
        assert(typeof base === "string", `no m.homeserver.base_url in ${JSON.stringify(body)}`);
        const config = await AutoDiscovery.fromDiscoveryConfig(body);
        const state = config["m.homeserver"]?.state;
        assert(state === AutoDiscovery.SUCCESS, `AutoDiscovery: ${state} ${config["m.homeserver"]?.error ?? ""}`);
        return `base_url ${base}`;
    });

    await step("login", [], async () => {
        for (const u of USERS) {
            const tmp = sdk.createClient({ baseUrl: BASE_URL, fetchFn: recordingFetch(u.name) });
            const flows = await tmp.loginFlows();
            assert(flows.flows?.some((f) => f.type === "m.login.password"), `no m.login.password in ${JSON.stringify(flows)}`);
            const creds = await tmp.loginRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: u.login },
                password: u.password,
                initial_device_display_name: `js-sdk ${u.name}`,
            });
            assert(creds.access_token && creds.user_id && creds.device_id, `login answer: ${JSON.stringify(creds)}`);
            clients.push(makeClient(u, creds));
        }
        const who = await clients[A].client.whoami();
        assert(who.user_id === clients[A].userId, `whoami: ${JSON.stringify(who)}`);
        return clients.map((c) => `${c.userId} device ${c.deviceId}`).join("; ");
    });

    await step("capabilities", ["login"], async () => {
        const caps = await clients[A].client.getCapabilities();
        // Element reads m.room_versions (room upgrade prompts) and m.change_password (settings).
        assert(caps && typeof caps === "object", `capabilities: ${JSON.stringify(caps)}`);
        assert(caps["m.room_versions"]?.default, `no m.room_versions.default in ${JSON.stringify(caps)}`);
        return `default room version ${caps["m.room_versions"].default}`;
    });

    await step("voip_turn_server", ["login"], async () => {
        // Element (with WebRTC) polls this at start; an empty object means no TURN server configured.
        const res = await clients[A].client.turnServer();
        assert(res && typeof res === "object", `turnServer: ${JSON.stringify(res)}`);
        return `uris ${JSON.stringify(res.uris ?? [])}`;
    });

    await step("profile", ["login"], async () => {
        const c = clients[A];
        await c.client.setDisplayName("Alice Js");
        const profile = await c.client.getProfileInfo(c.userId);
        assert(profile.displayname === "Alice Js", `profile: ${JSON.stringify(profile)}`);
        return "displayname set and read back";
    });

    await step("presence", ["login"], async () => {
        const c = clients[A];
        await c.client.setPresence({ presence: "online", status_msg: "testing" });
        const got = await c.client.getPresence(c.userId);
        assert(got.presence === "online", `presence: ${JSON.stringify(got)}`);
        return `presence ${got.presence}`;
    });

    await step("pushers", ["login"], async () => {
        const c = clients[A].client;
        const before = await c.getPushers();
        assert(Array.isArray(before.pushers), `pushers: ${JSON.stringify(before)}`);
        const pusher = {
            kind: "http", app_id: "org.example.jstest", app_display_name: "js test", device_display_name: "node",
            pushkey: "jstest-pushkey", lang: "en", data: { url: "http://127.0.0.1:9/_matrix/push/v1/notify" },
        };
        await c.setPusher(pusher);
        const during = await c.getPushers();
        assert(during.pushers.some((p) => p.pushkey === pusher.pushkey), `pusher not listed: ${JSON.stringify(during)}`);
        await c.removePusher(pusher.pushkey, pusher.app_id);
        const after = await c.getPushers();
        assert(!after.pushers.some((p) => p.pushkey === pusher.pushkey), `pusher not removed: ${JSON.stringify(after)}`);
        return "set, listed, removed";
    });

    await step("devices", ["login"], async () => {
        const c = clients[A];
        const { devices } = await c.client.getDevices();
        assert(devices.some((d) => d.device_id === c.deviceId), `own device missing: ${JSON.stringify(devices)}`);
        await c.client.setDeviceDetails(c.deviceId, { display_name: "renamed by js-sdk" });
        const one = await c.client.getDevice(c.deviceId);
        assert(one.display_name === "renamed by js-sdk", `device: ${JSON.stringify(one)}`);
        return `${devices.length} device(s); renamed ${c.deviceId}`;
    });

    await step("delete_device_uia", ["login"], async () => {
        // Element's "Sign out" of another session: POST /delete_devices, 401 with a UIA session, then again with
        // m.login.password.
        const c = clients[A];
        const tmp = sdk.createClient({ baseUrl: BASE_URL, fetchFn: recordingFetch(c.name) });
        const extra = await tmp.loginRequest({
            type: "m.login.password", identifier: { type: "m.id.user", user: c.login.login }, password: c.login.password,
        });
        let session;
        const unauthenticated = await c.client.deleteMultipleDevices([extra.device_id]).then(() => null, (err) => err);
        assert(unauthenticated, "delete_devices without auth succeeded");
        {
            const err = unauthenticated;
            assert(err.httpStatus === 401 && err.data?.session, `expected 401 with a UIA session: ${err.httpStatus} ${JSON.stringify(err.data)}`);
            assert(err.data.flows?.some((f) => f.stages?.includes("m.login.password")), `no password flow: ${JSON.stringify(err.data)}`);
            session = err.data.session;
        }
        await c.client.deleteMultipleDevices([extra.device_id], {
            type: "m.login.password", session, identifier: { type: "m.id.user", user: c.userId }, password: c.login.password,
        });
        const { devices } = await c.client.getDevices();
        assert(!devices.some((d) => d.device_id === extra.device_id), "deleted device still listed");
        return `deleted ${extra.device_id}`;
    });

    await step("push_rules", ["login"], async () => {
        const c = clients[A].client;
        // The raw answer: client.getPushRules() fills in missing default rules itself (rewriteDefaultRules), so
        // it would hide a server without them. Element calls it through the sync start-up (GET /pushrules/).
        const raw = () => c.http.authedRequest("GET", "/pushrules/");
        const rules = await raw();
        const ids = (kind) => (rules.global?.[kind] ?? []).map((r) => r.rule_id);
        for (const [kind, id] of [["override", ".m.rule.master"], ["override", ".m.rule.is_room_mention"],
            ["override", ".m.rule.suppress_notices"], ["underride", ".m.rule.message"],
            ["underride", ".m.rule.room_one_to_one"]]) {
            assert(ids(kind).includes(id), `default rule ${kind}/${id} missing: ${JSON.stringify(ids(kind))}`);
        }
        await c.addPushRule("global", "content", "jstest_freezer", { pattern: "freezer", actions: ["notify"] });
        let now = await raw();
        const added = (now.global?.content ?? []).find((r) => r.rule_id === "jstest_freezer");
        assert(added && added.enabled !== false && added.pattern === "freezer", `added rule: ${JSON.stringify(added)}`);
        await c.setPushRuleEnabled("global", "content", "jstest_freezer", false);
        await c.setPushRuleActions("global", "content", "jstest_freezer", ["notify", { set_tweak: "highlight" }]);
        now = await raw();
        const changed = (now.global?.content ?? []).find((r) => r.rule_id === "jstest_freezer");
        assert(changed?.enabled === false, `rule not disabled: ${JSON.stringify(changed)}`);
        assert(JSON.stringify(changed.actions).includes("highlight"), `actions not set: ${JSON.stringify(changed)}`);
        await c.deletePushRule("global", "content", "jstest_freezer");
        now = await raw();
        assert(!(now.global?.content ?? []).some((r) => r.rule_id === "jstest_freezer"), "rule not deleted");
        // Element's notification settings toggle the master rule and built-in rules this way.
        await c.setPushRuleEnabled("global", "override", ".m.rule.suppress_notices", false);
        await c.setPushRuleEnabled("global", "override", ".m.rule.suppress_notices", true);
        return `${Object.values(rules.global).flat().length} default rules; add/disable/actions/delete ok`;
    });

    await step("start_prepared", ["login"], async () => {
        // Element's MatrixClientPeg start options (no crypto: that is the E2EE issue).
        await Promise.all(clients.map(async (c) => {
            const prepared = new Promise((resolve, reject) => {
                c.client.on(ClientEvent.Sync, (state, _prev, data) => {
                    if (state === SyncState.Prepared || state === SyncState.Syncing) resolve(state);
                    if (state === SyncState.Error) c.lastSyncError = data?.error?.message ?? "sync error";
                });
            });
            await c.client.startClient({
                initialSyncLimit: 20,
                pendingEventOrdering: PendingEventOrdering.Detached,
                lazyLoadMembers: true,
                threadSupport: true,
            });
            await withTimeout(prepared, STEP_TIMEOUT_MS, `${c.name} to reach PREPARED (last error: ${c.lastSyncError ?? "none"})`);
        }));
        const pushRules = clients[A].client.pushRules;
        assert(pushRules?.global, "client.pushRules not loaded");
        return `both clients PREPARED; supportsThreads=${clients[A].client.supportsThreads()}`;
    });

    await step("filter", ["start_prepared"], async () => {
        // startClient created a sync filter (POST /user/{userId}/filter); read it back as Element's store does.
        const created = requests.find((r) => r.who === "user1" && r.method === "POST" && /\/user\/[^/]+\/filter$/.test(r.path));
        assert(created && created.status === 200, `filter upload: ${created ? describeRequest(created) : "not seen"}`);
        const c = clients[A].client;
        const filter = await c.createFilter({ room: { timeline: { limit: 5 } } });
        const back = await c.getFilter(clients[A].userId, filter.filterId, false);
        assert(back.getDefinition()?.room?.timeline?.limit === 5, `filter read back: ${JSON.stringify(back.getDefinition())}`);
        return `filter ${filter.filterId}`;
    });

    await step("room_create_invite_join", ["start_prepared"], async () => {
        const [a, b] = clients;
        const created = await a.client.createRoom({ name: "js-sdk room", preset: "private_chat" });
        roomId = created.room_id;
        await waitFor(a.client, () => a.client.getRoom(roomId), "alice to see the new room", [[a.client, ClientEvent.Room]]);
        await a.client.invite(roomId, b.userId);
        await waitFor(b.client, () => b.client.getRoom(roomId)?.getMyMembership() === "invite",
            "bob to see the invite", [[b.client, ClientEvent.Room], [b.client, RoomMemberEvent.Membership]]);
        await b.client.joinRoom(roomId);
        await waitFor(b.client, () => b.client.getRoom(roomId)?.getMyMembership() === "join", "bob to be joined",
            [[b.client, RoomMemberEvent.Membership]]);
        await waitFor(a.client, () => a.client.getRoom(roomId)?.getMember(b.userId)?.membership === "join",
            "alice to see bob join", [[a.client, RoomMemberEvent.Membership]]);
        return roomId;
    });

    const ROOM = ["room_create_invite_join"];

    await step("messages_both_ways", ROOM, async () => {
        const [a, b] = clients;
        sent.first = await sendAndSee(a, b, { msgtype: "m.text", body: "hello from alice" }, "alice's message");
        sent.reply = await sendAndSee(b, a, { msgtype: "m.text", body: "hello from bob" }, "bob's message");
        sent.third = await sendAndSee(a, b, { msgtype: "m.text", body: "third message" }, "alice's second message");
        return `${sent.first}, ${sent.reply}, ${sent.third}`;
    });

    await step("room_members_lazy_load", ["messages_both_ways"], async () => {
        // Opening a room in Element loads its member list (lazy loading): GET /rooms/{r}/members?at=...&not_membership=leave
        const b = clients[B];
        const room = b.client.getRoom(roomId);
        const mark = requests.length;
        await room.loadMembersIfNeeded();
        const call = requests.slice(mark).find((r) => r.path.endsWith("/members"));
        assert(call?.status === 200, `members request: ${call ? describeRequest(call) : "not made"}`);
        const joined = room.getJoinedMembers().map((m) => m.userId).sort();
        assert(joined.includes(clients[A].userId) && joined.includes(b.userId), `joined members: ${joined}`);
        return `joined: ${joined.join(", ")}`;
    });

    await step("push_rules_in_sync", ["start_prepared", "push_rules"], async () => {
        // Element's notification settings follow client.pushRules, which /sync updates (account_data m.push_rules).
        const c = clients[A].client;
        await c.addPushRule("global", "content", "jstest_sync", { pattern: "thermostat", actions: ["notify"] });
        await waitFor(c, () => c.pushRules?.global?.content?.some((r) => r.rule_id === "jstest_sync"),
            "the new rule in m.push_rules account data from /sync", [[c, ClientEvent.AccountData]]);
        await c.deletePushRule("global", "content", "jstest_sync");
        await waitFor(c, () => !c.pushRules?.global?.content?.some((r) => r.rule_id === "jstest_sync"),
            "the deleted rule gone from m.push_rules in /sync", [[c, ClientEvent.AccountData]]);
        return "m.push_rules followed add and delete";
    });

    await step("account_data", ["start_prepared"], async () => {
        const c = clients[A].client;
        const type = "org.example.jstest";
        await c.setAccountData(type, { colour: "green" });
        await waitFor(c, () => c.getAccountData(type)?.getContent()?.colour === "green",
            "global account data in /sync", [[c, ClientEvent.AccountData]]);
        // getAccountDataFromServer answers from the sync store once synced: ask the server itself.
        const fromServer = await c.http.authedRequest("GET",
            `/user/${encodeURIComponent(clients[A].userId)}/account_data/${type}`);
        assert(fromServer?.colour === "green", `GET account data: ${JSON.stringify(fromServer)}`);
        return "set, seen in /sync, read back";
    });

    await step("room_account_data", ROOM, async () => {
        const c = clients[A].client;
        const type = "org.example.jstest.room";
        await c.setRoomAccountData(roomId, type, { pinned: true });
        await waitFor(c, () => c.getRoom(roomId)?.getAccountData(type)?.getContent()?.pinned === true,
            "room account data in /sync", [[c.getRoom(roomId), RoomEvent.AccountData]]);
        const res = await c.http.authedRequest("GET",
            `/user/${encodeURIComponent(clients[A].userId)}/rooms/${encodeURIComponent(roomId)}/account_data/${type}`);
        assert(res?.pinned === true, `GET room account data: ${JSON.stringify(res)}`);
        return "set, seen in /sync, read back";
    });

    await step("room_tags", ROOM, async () => {
        const c = clients[A].client;
        const room = c.getRoom(roomId);
        await c.setRoomTag(roomId, "m.favourite", { order: 0.25 });
        await waitFor(c, () => room.tags?.["m.favourite"]?.order === 0.25, "m.favourite tag in /sync",
            [[room, RoomEvent.Tags]]);
        const tags = await c.getRoomTags(roomId);
        assert(tags.tags?.["m.favourite"], `GET tags: ${JSON.stringify(tags)}`);
        await c.deleteRoomTag(roomId, "m.favourite");
        await waitFor(c, () => !room.tags?.["m.favourite"], "tag removal in /sync", [[room, RoomEvent.Tags]]);
        return "tag added, seen, removed";
    });

    await step("typing", ROOM, async () => {
        const [a, b] = clients;
        const member = () => b.client.getRoom(roomId)?.getMember(a.userId);
        await a.client.sendTyping(roomId, true, 20000);
        await waitFor(b.client, () => member()?.typing === true, "bob to see alice typing (RoomMember.typing)",
            [[b.client, RoomMemberEvent.Typing]]);
        await a.client.sendTyping(roomId, false);
        await waitFor(b.client, () => member()?.typing === false, "bob to see alice stop typing",
            [[b.client, RoomMemberEvent.Typing]]);
        return "typing on and off seen";
    });

    await step("notification_count", ["messages_both_ways"], async () => {
        // Sending counts as reading for the sender, so a fresh message from alice makes bob's count go up.
        const [a, b] = clients;
        sent.unread = await sendAndSee(a, b, { msgtype: "m.text", body: "are you there?" }, "a message for bob");
        const room = b.client.getRoom(roomId);
        const count = await waitFor(b.client, () => {
            const server = b.unread.get(roomId)?.notification_count ?? 0;
            const local = room.getUnreadNotificationCount(NotificationCountType.Total);
            return server > 0 && local > 0 ? { server, local } : null;
        }, () => `bob's unread notification count from /sync above 0 (last unread_notifications: ${JSON.stringify(b.unread.get(roomId) ?? null)})`, [[room, RoomEvent.UnreadNotifications]]);
        return `bob: server notification_count ${count.server}, room count ${count.local}`;
    });

    await step("read_receipt", ["notification_count"], async () => {
        const [a, b] = clients;
        const event = b.client.getRoom(roomId).findEventById(sent.unread);
        await b.client.sendReadReceipt(event, ReceiptType.Read);
        const aRoom = a.client.getRoom(roomId);
        await waitFor(a.client, () => aRoom.getUsersReadUpTo(aRoom.findEventById(sent.unread)).includes(b.userId),
            "alice to see bob's m.read receipt", [[aRoom, RoomEvent.Receipt]]);
        return `receipt on ${sent.unread} seen by alice`;
    });

    await step("notification_count_cleared", ["read_receipt"], async () => {
        const b = clients[B];
        const room = b.client.getRoom(roomId);
        await waitFor(b.client, () => b.unread.get(roomId)?.notification_count === 0
            && room.getUnreadNotificationCount(NotificationCountType.Total) === 0,
        () => `bob's notification count from /sync back to 0 after his receipt (last unread_notifications: ${JSON.stringify(b.unread.get(roomId) ?? null)})`, [[room, RoomEvent.UnreadNotifications]]);
        return "server notification_count 0";
    });

    await step("read_markers", ["messages_both_ways"], async () => {
        const b = clients[B];
        const room = b.client.getRoom(roomId);
        await b.client.setRoomReadMarkers(roomId, sent.unread ?? sent.third);
        const target = sent.unread ?? sent.third;
        await waitFor(b.client, () => room.getAccountData("m.fully_read")?.getContent()?.event_id === target,
            "m.fully_read room account data in /sync", [[room, RoomEvent.AccountData]]);
        return `m.fully_read at ${target}`;
    });

    await step("context", ["messages_both_ways"], async () => {
        // Jumping to an event not in the loaded timeline (a permalink, a search result): GET /rooms/{r}/context/{e}.
        const b = clients[B];
        const room = b.client.getRoom(roomId);
        const timelineSet = new EventTimelineSet(room, { pendingEvents: false, timelineSupport: true });
        // The SDK asks for limit=0 (just the event, its state and the start/end tokens) with the lazy-loading filter,
        // then pages from those tokens with /messages.
        const timeline = await b.client.getEventTimeline(timelineSet, sent.reply);
        assert(timeline, "no timeline for the event");
        const ids = () => timeline.getEvents().map((e) => e.getId());
        assert(ids().includes(sent.reply), `event not in its context timeline: ${ids()}`);
        // Lazy-loaded members: at least the sender of the event comes with the state.
        assert(timeline.getState(Direction.Backward)?.getMember(b.userId), "no state (sender's member event) from /context");
        await b.client.paginateEventTimeline(timeline, { backwards: true, limit: 5 });
        await b.client.paginateEventTimeline(timeline, { backwards: false, limit: 5 });
        const order = [sent.first, sent.reply, sent.third].map((id) => ids().indexOf(id));
        assert(order[0] >= 0 && order[0] < order[1] && order[1] < order[2],
            `paging from the context's start/end tokens: ${JSON.stringify(order)} in ${ids()}`);
        // The plain endpoint with a limit: neighbours on each side, in the spec's order.
        const raw = await b.client.http.authedRequest("GET",
            `/rooms/${encodeURIComponent(roomId)}/context/${encodeURIComponent(sent.reply)}`, { limit: "4" });
        assert(raw.event?.event_id === sent.reply, `context event: ${JSON.stringify(raw.event)}`);
        assert(raw.events_before?.[0]?.event_id === sent.first, `events_before[0]: ${raw.events_before?.[0]?.event_id}`);
        assert(raw.events_after?.[0]?.event_id === sent.third, `events_after[0]: ${raw.events_after?.[0]?.event_id}`);
        assert(typeof raw.start === "string" && typeof raw.end === "string", "no start/end tokens");
        return `${timeline.getEvents().length} events after paging both ways from the context`;
    });

    await step("reaction", ["messages_both_ways"], async () => {
        const [a, b] = clients;
        const { event_id: reactionId } = await a.client.sendEvent(roomId, EventType.Reaction, {
            "m.relates_to": { rel_type: "m.annotation", event_id: sent.reply, key: "👍" },
        });
        // bob's SDK aggregates it on his message (what Element's reaction row shows)...
        const bRoom = b.client.getRoom(roomId);
        await waitFor(b.client, () => bRoom.relations.getChildEventsForEvent(sent.reply, "m.annotation", EventType.Reaction)
            ?.getRelations().some((e) => e.getId() === reactionId), "bob's SDK to aggregate the reaction",
        [[b.client, RoomEvent.Timeline]]);
        // ... and the server lists it: GET /v1/rooms/{r}/relations/{e}/m.annotation/m.reaction
        const res = await b.client.relations(roomId, sent.reply, "m.annotation", EventType.Reaction);
        assert(res.events.some((e) => e.getId() === reactionId), `relations API lacks the reaction: ${res.events.map((e) => e.getId())}`);
        const all = await b.client.fetchRelations(roomId, sent.reply, null, null);
        assert(all.chunk.some((e) => e.event_id === reactionId), "unfiltered relations lack the reaction");
        return `reaction ${reactionId}`;
    });

    await step("edit", ["messages_both_ways"], async () => {
        const [a, b] = clients;
        const { event_id: editId } = await b.client.sendMessage(roomId, {
            msgtype: "m.text", body: "* hello from bob (edited)",
            "m.new_content": { msgtype: "m.text", body: "hello from bob (edited)" },
            "m.relates_to": { rel_type: "m.replace", event_id: sent.reply },
        });
        const aRoom = a.client.getRoom(roomId);
        await waitFor(a.client, () => aRoom.findEventById(sent.reply)?.replacingEventId() === editId,
            "alice's SDK to apply the edit", [[a.client, RoomEvent.Timeline]]);
        assert(aRoom.findEventById(sent.reply).getContent().body === "hello from bob (edited)", "edited body not shown");
        const res = await a.client.relations(roomId, sent.reply, "m.replace", EventType.RoomMessage);
        assert(res.events.some((e) => e.getId() === editId), "relations API lacks the edit");
        // Bundled aggregation: the original event, fetched again, carries m.replace in unsigned m.relations.
        const raw = await a.client.fetchRoomEvent(roomId, sent.reply);
        assert(raw.unsigned?.["m.relations"]?.["m.replace"], `no bundled m.replace: ${JSON.stringify(raw.unsigned)}`);
        return `edit ${editId}`;
    });

    await step("thread", ["messages_both_ways"], async () => {
        const [a, b] = clients;
        const rootId = await sendAndSee(a, b, { msgtype: "m.text", body: "thread root" }, "the thread root");
        const { event_id: replyId } = await b.client.sendMessage(roomId, rootId, {
            msgtype: "m.text", body: "reply in thread",
            "m.relates_to": { rel_type: "m.thread", event_id: rootId, is_falling_back: true,
                "m.in_reply_to": { event_id: rootId } },
        });
        const aRoom = a.client.getRoom(roomId);
        const thread = await waitFor(a.client, () => {
            const t = aRoom.getThread(rootId);
            return t && t.events.some((e) => e.getId() === replyId) ? t : null;
        }, "alice to see bob's reply in a thread", [[aRoom, ThreadEvent.New], [aRoom, ThreadEvent.Update]]);
        assert(!aRoom.getLiveTimeline().getEvents().some((e) => e.getId() === replyId), "thread reply in the main timeline");
        // The thread list (Element's threads panel) and the root's bundled m.thread summary.
        const list = await a.client.createThreadListMessagesRequest(roomId, null, 30, Direction.Backward, ThreadFilterType.All);
        assert(list.chunk.some((e) => e.event_id === rootId), `thread root not in /threads: ${JSON.stringify(list.chunk.map((e) => e.event_id))}`);
        const raw = await a.client.fetchRoomEvent(roomId, rootId);
        const summary = raw.unsigned?.["m.relations"]?.["m.thread"];
        assert(summary?.count >= 1 && summary.latest_event?.event_id === replyId, `bundled m.thread: ${JSON.stringify(summary)}`);
        return `thread ${rootId} with ${thread.length} repl(y/ies)`;
    });

    await step("no_unknown_endpoints", ["start_prepared"], async () => {
        // Any stable-API path the SDK called that the server does not know at all (404 M_UNRECOGNIZED) is a gap.
        const unknown = requests.filter((r) => r.errcode === "M_UNRECOGNIZED" && !r.path.includes("/unstable/"));
        assert(!unknown.length, `unrecognised: ${[...new Set(unknown.map(describeRequest))].join(", ")}`);
        return `${requests.length} requests, none unrecognised`;
    });
}

const globalTimer = setTimeout(() => {
    emit("global_timeout", false, `the whole run took over ${GLOBAL_TIMEOUT_MS} ms`);
    finish(3);
}, GLOBAL_TIMEOUT_MS);

function finish(code) {
    for (const c of clients) {
        try {
            c.client.stopClient();
        } catch {
            // stopping is best effort
        }
    }
    process.stdout.write(JSON.stringify({ requests: requests.map(describeRequest) }) + "\n", () => process.exit(code));
}

main().then(
    () => {
        clearTimeout(globalTimer);
        finish(0);
    },
    (err) => {
        emit("script_error", false, String(err?.stack ?? err));
        finish(1);
    },
);

// Element's "secure backup" with matrix-js-sdk 43 and its Rust crypto (initRustCrypto), against a homeserver:
// cross-signing bootstrapped (POST /keys/device_signing/upload behind the password, /keys/signatures/upload),
// secret storage made, a key backup created (/room_keys/version), and the state read back the way Element does.
// Prints one JSON line per step on stdout: {"step", "ok", "detail"}; the last line is {"requests": [...]}.
//
// Usage: node secure_backup.mjs --base-url URL --user NAME --password PW [--step-timeout MS]
// Rust crypto also needs /keys/upload and /keys/query (the device-keys part of issue 14).

import process from "node:process";

for (const name of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[name] = (...args) => {
        process.stderr.write(args.map((a) => (typeof a === "string" ? a : safe(a))).join(" ") + "\n");
    };
}

function safe(value) {
    if (value instanceof Error) return `${value.name}: ${value.message}`;
    try {
        return JSON.stringify(value);
    } catch {
        return String(value);
    }
}

function arg(name, fallback) {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const BASE_URL = arg("base-url");
const USER = arg("user");
const PASSWORD = arg("password");
const STEP_TIMEOUT_MS = Number(arg("step-timeout", "20000"));

const sdk = await import("matrix-js-sdk");
const { ClientEvent, SyncState } = sdk;

const requests = [];
const loggingFetch = async (input, init) => {
    const url = new URL(input instanceof URL || typeof input === "string" ? input : input.url);
    const method = init?.method ?? "GET";
    const response = await fetch(input, init);
    let errcode;
    if (!response.ok) {
        try {
            errcode = (await response.clone().json()).errcode;
        } catch {}
    }
    requests.push(`${method} ${url.pathname} ${response.status}${errcode ? " " + errcode : ""}`);
    return response;
};

let failed = false;
async function step(name, fn) {
    if (failed) {
        process.stdout.write(JSON.stringify({ step: name, ok: false, detail: "skipped: an earlier step failed" }) + "\n");
        return;
    }
    let timer;
    try {
        const detail = await Promise.race([
            fn(),
            new Promise((_, reject) => {
                timer = setTimeout(() => reject(new Error(`timed out after ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
            }),
        ]);
        process.stdout.write(JSON.stringify({ step: name, ok: true, detail: detail ?? null }) + "\n");
    } catch (err) {
        failed = true;
        process.stdout.write(JSON.stringify({ step: name, ok: false, detail: safe(err) }) + "\n");
    } finally {
        clearTimeout(timer);
    }
}

let client;
let secretStorageKey; // [keyId, privateKey] once created: the app's cache (Element keeps it in memory too)
// As Element's InteractiveAuth: the request without auth first; on a 401, again with the password and its session.
const uiaRounds = [];
const auth = async (makeRequest) => {
    let session;
    try {
        await makeRequest(null);
        uiaRounds.push("accepted without auth");
        return;
    } catch (err) {
        if (err.httpStatus !== 401 || !err.data?.session) throw err;
        session = err.data.session;
        uiaRounds.push("401");
    }
    await makeRequest({
        type: "m.login.password", identifier: { type: "m.id.user", user: USER }, password: PASSWORD, session,
    });
    uiaRounds.push("accepted with the password");
};

await step("login", async () => {
    const anon = sdk.createClient({ baseUrl: BASE_URL, fetchFn: loggingFetch });
    const login = await anon.loginRequest({
        type: "m.login.password", identifier: { type: "m.id.user", user: USER }, password: PASSWORD,
        initial_device_display_name: "secure backup test",
    });
    client = sdk.createClient({
        baseUrl: BASE_URL, fetchFn: loggingFetch, accessToken: login.access_token, userId: login.user_id,
        deviceId: login.device_id,
        cryptoCallbacks: {
            getSecretStorageKey: async ({ keys }) => {
                if (!secretStorageKey || !(secretStorageKey[0] in keys)) return null;
                return secretStorageKey;
            },
            cacheSecretStorageKey: (keyId, _info, key) => {
                secretStorageKey = [keyId, key];
            },
        },
    });
    return { user_id: login.user_id, device_id: login.device_id };
});

await step("init_rust_crypto", async () => {
    await client.initRustCrypto({ useIndexedDB: false });
    return null;
});

await step("start_prepared", async () => {
    const prepared = new Promise((resolve, reject) => {
        client.on(ClientEvent.Sync, (state, _prev, data) => {
            if (state === SyncState.Prepared) resolve();
            if (state === SyncState.Error) reject(data?.error ?? new Error("sync error"));
        });
    });
    await client.startClient({ initialSyncLimit: 1 });
    await prepared;
    return null;
});

await step("bootstrap_cross_signing", async () => {
    const crypto = client.getCrypto();
    await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: auth, setupNewCrossSigning: true });
    const status = await crypto.getCrossSigningStatus();
    if (!status.publicKeysOnDevice || !status.privateKeysCachedLocally.masterKey) {
        throw new Error(`cross-signing not set up: ${safe(status)}`);
    }
    return status;
});

await step("cross_signing_ready", async () => {
    const crypto = client.getCrypto();
    const ready = await crypto.isCrossSigningReady();
    const own = await crypto.getDeviceVerificationStatus(client.getUserId(), client.getDeviceId());
    if (!ready || !own?.crossSigningVerified) throw new Error(`own device not cross-signed: ${safe(own)}`);
    return { ready, uia: uiaRounds.splice(0) };
});

// What other users' clients will see: /keys/query has the three keys, the device's signature by the
// self-signing key, the master key's signature by the device.
await step("keys_query_shows_signatures", async () => {
    const me = client.getUserId();
    const device = client.getDeviceId();
    const answer = await client.http.authedRequest("POST", "/keys/query", undefined, { device_keys: { [me]: [] } });
    const master = answer.master_keys?.[me];
    const selfSigning = answer.self_signing_keys?.[me];
    if (!master || !selfSigning || !answer.user_signing_keys?.[me]) throw new Error(`keys missing: ${safe(answer)}`);
    const sskId = Object.keys(selfSigning.keys)[0];
    const deviceSigs = answer.device_keys?.[me]?.[device]?.signatures?.[me] ?? {};
    if (!(sskId in deviceSigs)) throw new Error(`device not signed by the self-signing key: ${safe(deviceSigs)}`);
    if (!(`ed25519:${device}` in (master.signatures?.[me] ?? {}))) {
        throw new Error(`master key not signed by the device: ${safe(master.signatures)}`);
    }
    return { master: Object.keys(master.keys)[0] };
});

await step("replace_cross_signing_needs_password", async () => {
    const crypto = client.getCrypto();
    await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: auth, setupNewCrossSigning: true });
    const rounds = uiaRounds.splice(0);
    if (rounds.join(",") !== "401,accepted with the password") throw new Error(`UIA rounds: ${rounds}`);
    if (!(await crypto.isCrossSigningReady())) throw new Error("not ready after the reset");
    return { uia: rounds };
});

await step("bootstrap_secret_storage_with_backup", async () => {
    const crypto = client.getCrypto();
    await crypto.bootstrapSecretStorage({
        createSecretStorageKey: async () => crypto.createRecoveryKeyFromPassphrase(),
        setupNewKeyBackup: true,
    });
    const version = await crypto.getActiveSessionBackupVersion();
    if (!version) throw new Error("no active key backup after bootstrapSecretStorage");
    const info = await client.http.authedRequest("GET", "/room_keys/version");
    if (info.version !== version) throw new Error(`server says ${info.version}, client ${version}`);
    return { version, algorithm: info.algorithm, ready: await crypto.isSecretStorageReady() };
});

await step("reset_key_backup", async () => {
    const crypto = client.getCrypto();
    const before = await crypto.getActiveSessionBackupVersion();
    await crypto.resetKeyBackup();
    const after = await crypto.getActiveSessionBackupVersion();
    if (!after || after === before) throw new Error(`backup not replaced: ${before} -> ${after}`);
    const trust = await crypto.isKeyBackupTrusted(await crypto.getKeyBackupInfo());
    if (!trust.trusted || !trust.matchesDecryptionKey) throw new Error(`new backup not trusted: ${safe(trust)}`);
    return { before, after };
});

await step("room_keys_backed_up", async () => {
    const crypto = client.getCrypto();
    const version = await crypto.getActiveSessionBackupVersion();
    const { room_id: roomId } = await client.createRoom({
        name: "encrypted",
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    // Until sync has brought the room with its m.room.encryption state, the SDK would send in the clear.
    while (!client.getRoom(roomId) || !(await crypto.isEncryptionEnabledInRoom(roomId))) {
        await new Promise((r) => setTimeout(r, 50));
    }
    await client.sendTextMessage(roomId, "backed up");
    for (;;) {
        const keys = await client.http.authedRequest("GET", "/room_keys/keys", { version });
        const sessions = keys.rooms?.[roomId]?.sessions ?? {};
        if (Object.keys(sessions).length > 0) {
            const info = await client.http.authedRequest("GET", "/room_keys/version");
            // bytes: one backed-up session as the client uploads it (the hub's body limit is 128 KiB)
            return { version, sessions: Object.keys(sessions).length, count: info.count, etag: info.etag,
                bytes: JSON.stringify(sessions).length };
        }
        await new Promise((r) => setTimeout(r, 250));
    }
});

try {
    client?.stopClient();
} catch {}
process.stdout.write(JSON.stringify({ requests }) + "\n");
process.exit(0);

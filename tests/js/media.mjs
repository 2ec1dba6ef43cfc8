// matrix-js-sdk 43 and the content repository (issue 15): what Element does with a picture.
// uploadContent, an m.image event that the other user receives, the media config, and download and
// thumbnail through the authenticated paths (mxcUrlToHttp with useAuthentication, the bearer token).
//
// Usage: node media.mjs --base-url URL --user1 alice --password1 PW --user2 bob --password2 PW --image FILE
// Prints one JSON line per step on stdout: {"step", "ok", "detail"}. Never hangs (a global timeout).

import process from "node:process";
import { readFileSync } from "node:fs";

for (const name of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[name] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}
setTimeout(() => {
    process.stdout.write(JSON.stringify({ step: "global_timeout", ok: false, detail: "60 s" }) + "\n");
    process.exit(2);
}, 60_000).unref();

const sdk = await import("matrix-js-sdk");

function arg(name) {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : undefined;
}

const BASE_URL = arg("base-url");
const IMAGE = readFileSync(arg("image"));

function report(step, ok, detail) {
    process.stdout.write(JSON.stringify({ step, ok, detail }) + "\n");
}

async function step(name, fn) {
    try {
        const detail = await fn();
        report(name, true, detail ?? "");
        return true;
    } catch (err) {
        report(name, false, `${err?.name}: ${err?.message} ${err?.data ? JSON.stringify(err.data) : ""}`);
        return false;
    }
}

function assert(cond, message) {
    if (!cond) throw new Error(message);
}

async function login(user, password) {
    const tmp = sdk.createClient({ baseUrl: BASE_URL });
    const creds = await tmp.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user }, password });
    return sdk.createClient({ baseUrl: BASE_URL, accessToken: creds.access_token, userId: creds.user_id,
                              deviceId: creds.device_id });
}

const alice = await login(arg("user1"), arg("password1"));
const bob = await login(arg("user2"), arg("password2"));
let mxc, roomId;

await step("versions_v1_11", async () => {
    const versions = await alice.getVersions();
    assert(versions.versions.includes("v1.11"), JSON.stringify(versions));
    assert(await alice.doesServerSupportUnstableFeature("org.matrix.msc3916.stable") ||
           await alice.isVersionSupported("v1.11"), "SDK does not see authenticated media");
});

await step("media_config", async () => {
    const config = await alice.getMediaConfig(true);
    assert(Number.isInteger(config["m.upload.size"]) && config["m.upload.size"] > IMAGE.length, JSON.stringify(config));
    return config;
});

await step("upload_content", async () => {
    const blob = new Blob([IMAGE], { type: "image/png" });
    const answer = await alice.uploadContent(blob, { name: "boiler.png", type: "image/png" });
    mxc = answer.content_uri;
    assert(typeof mxc === "string" && mxc.startsWith("mxc://"), JSON.stringify(answer));
    return mxc;
});

await step("m_image_event", async () => {
    roomId = (await alice.createRoom({ preset: "public_chat", invite: [bob.getUserId()] })).room_id;
    await bob.joinRoom(roomId);
    await alice.sendMessage(roomId, { msgtype: "m.image", body: "boiler.png", url: mxc,
                                      info: { mimetype: "image/png", size: IMAGE.length, w: 64, h: 48 } });
    const messages = await bob.createMessagesRequest(roomId, null, 20, sdk.Direction.Backward);
    const image = messages.chunk.find((ev) => ev.type === "m.room.message" && ev.content.msgtype === "m.image");
    assert(image && image.content.url === mxc, JSON.stringify(messages.chunk.map((e) => e.type)));
});

async function fetchAuthed(client, url) {
    const response = await fetch(url, { headers: { Authorization: `Bearer ${client.getAccessToken()}` } });
    const body = Buffer.from(await response.arrayBuffer());
    return { status: response.status, type: response.headers.get("content-type"), body,
             disposition: response.headers.get("content-disposition"), nosniff: response.headers.get("x-content-type-options") };
}

await step("download_authenticated", async () => {
    const url = bob.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true);
    assert(url.includes("/_matrix/client/v1/media/download/"), url);
    const got = await fetchAuthed(bob, url);
    assert(got.status === 200 && got.body.equals(IMAGE), `status ${got.status}, ${got.body.length} bytes`);
    assert(got.type === "image/png" && got.nosniff === "nosniff" && got.disposition.startsWith("inline"),
           `${got.type} / ${got.disposition} / ${got.nosniff}`);
    return url;
});

await step("thumbnail_authenticated", async () => {
    const url = bob.mxcUrlToHttp(mxc, 32, 32, "scale", false, true, true);
    assert(url.includes("/_matrix/client/v1/media/thumbnail/"), url);
    const got = await fetchAuthed(bob, url);
    assert(got.status === 200 && got.type.startsWith("image/") && got.body.length > 0, `status ${got.status} ${got.type}`);
    const crop = await fetchAuthed(bob, bob.mxcUrlToHttp(mxc, 16, 16, "crop", false, true, true));
    assert(crop.status === 200, `crop: ${crop.status}`);
});

await step("unauthenticated_is_refused", async () => {
    const legacy = bob.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, false, false);
    const noToken = await fetch(bob.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true));
    const frozen = await fetch(legacy);
    assert(noToken.status === 401 && frozen.status === 404, `no token ${noToken.status}, legacy ${frozen.status}`);
});

process.exit(0);

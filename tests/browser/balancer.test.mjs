// Browsers through a real load balancer: Debian's nginx in front of three forge-gateway
// processes that share PostgreSQL, Redis, an images folder and two forge-sim backends.
//
// Every page first connects to process 1 (the other two are not started yet, so nginx passes
// every request to the one that answers); process 1 takes both backend slots and runs the jobs.
// Once two jobs are complete and two are running, processes 2 and 3 start and process 1 is
// killed (SIGKILL). Then:
// - every page (two reference pages and one client.js tab) reconnects by itself through nginx to
//   process 2 or 3, and a prompt sent after the kill completes;
// - the two jobs process 1 was running go back to the queue when their lease (JOB_LEASE=3s)
//   runs out and run again elsewhere (the backends see one more request per lost job); the
//   client.js tab, whose job was one of them, sees it go back to position 1 and complete;
// - every page ends with every one of its cards complete, once, its image loaded (images made
//   by process 1 are served by 2 and 3), and each client's state equal to what REST says;
// - edits the client.js tab sent as process 1 died are each applied once (sent again, same
//   ref, after the reconnect);
// - no frame broke the contract, no client saw an anomaly, no completion was delivered twice.
//
// Needs PostgreSQL and Redis (FG_PG_URL, FG_REDIS_URL; CI's are the defaults) and nginx
// (NGINX_PATH, /usr/sbin/nginx; tests/browser/run installs Debian's package). Outside CI the
// test is skipped, saying why, when one of them is missing; in CI (CI set) it fails instead.
// Uses a fresh PostgreSQL schema and Redis key prefix, dropped at the end.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import {
  runDir, startProcess, stopProcess, startSim, eventually, cards, connectionText, waitConnected, shot,
  launchBrowser, watchPage, checkFrames, freePort,
} from "./harness.mjs";

const PG = process.env.FG_PG_URL || "postgres://postgres@127.0.0.1:5432/test";
const REDIS = process.env.FG_REDIS_URL || "redis://127.0.0.1:6379";
const NGINX = process.env.NGINX_PATH || "/usr/sbin/nginx";
const tag = `fg_lb_${process.pid}_${Date.now() % 1_000_000}`; // schema and key prefix
const LATENCY = "2s"; // each generation: long enough to be running at the kill

function missing() {
  if (!existsSync(NGINX)) return `no nginx at ${NGINX}`;
  if (spawnSync("psql", [PG, "-qAtc", "select 1"], { encoding: "utf8" }).stdout?.trim() !== "1") return `no PostgreSQL at ${PG}`;
  if (spawnSync("redis-cli", ["-u", REDIS, "ping"], { encoding: "utf8" }).stdout?.trim() !== "PONG") return `no Redis at ${REDIS}`;
  return null;
}
const lacking = missing();
if (lacking && process.env.CI) throw new Error(`the load-balancer browser test needs it: ${lacking}`);
const skip = lacking ? `${lacking} (set FG_PG_URL, FG_REDIS_URL, NGINX_PATH)` : false;

// ---------------------------------------------------------------- processes

const dataDir = path.join(runDir, "shared-data"); // images and the dev keys, shared by all three
let sims = [];
let ports = [];
let gateways = []; // index 0, 1, 2: processes 1, 2, 3 (null until started)
let nginx;
let lb; // http://127.0.0.1:PORT of nginx

function gatewayEnv(port) {
  return {
    BIND: `127.0.0.1:${port}`,
    DATA_DIR: dataDir,
    DATABASE_URL: PG,
    DATABASE_SCHEMA: tag,
    REDIS_URL: REDIS,
    REDIS_PREFIX: tag,
    FORGE_URLS: sims.map((sim) => sim.url).join(","),
    FORGE_TIMEOUT: "60s",
    FORGE_PROGRESS_INTERVAL: "200ms",
    JOB_LEASE: "3s", // longer than a reconnect: the owner sees its job go back
    DEV_MODE: "true",
    LOG_FORMAT: "json",
  };
}

async function startGateway(n) {
  gateways[n] = await startProcess(`lb-gateway-${n + 1}`, "forge-gateway", [], gatewayEnv(ports[n]));
  return gateways[n];
}

/** Resolves when something accepts TCP connections on 127.0.0.1:port. */
async function accepting(port) {
  await eventually(`127.0.0.1:${port} accepts connections`, () => new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => { socket.destroy(); resolve(); });
    socket.on("error", reject);
  }), 10000);
}

/** nginx as the documented load balancer (docs/operations.md), in the foreground, files in the run folder. */
async function startNginx(port) {
  const dir = path.join(runDir, "nginx");
  mkdirSync(dir, { recursive: true });
  const user = process.getuid && process.getuid() === 0 ? "user root root;\n" : "";
  writeFileSync(path.join(dir, "nginx.conf"), `${user}worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 512; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; "" close; }
  upstream gateways {
${ports.map((p) => `    server 127.0.0.1:${p} max_fails=1 fail_timeout=1s;`).join("\n")}
  }
  server {
    listen 127.0.0.1:${port};
    location = /ws {
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
    location / {
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }
  }
}
`);
  nginx = await startProcess("lb-nginx", NGINX, ["-e", path.join(dir, "error.log"), "-p", dir, "-c", path.join(dir, "nginx.conf"), "-g", "daemon off;"], {}, 10000,
    async () => { await accepting(port); return `http://127.0.0.1:${port}`; });
  return nginx.url;
}

async function simStats(sim) {
  const response = await fetch(`${sim.url}/sim/stats`);
  assert.ok(response.ok, `${sim.url}/sim/stats: ${response.status}`);
  return response.json();
}

/** The sum of a Prometheus series over its labels on one process's /admin/metrics. */
async function gauge(gateway, name) {
  const token = readFileSync(path.join(dataDir, "dev-admin-token"), "utf8").trim();
  const response = await fetch(`${gateway.url}/admin/metrics`, { headers: { Authorization: `Bearer ${token}` } });
  assert.ok(response.ok, `${gateway.url}/admin/metrics: ${response.status}`);
  const lines = (await response.text()).split("\n").filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  assert.ok(lines.length > 0, `${name} on ${gateway.url}`);
  return lines.reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
}

// ---------------------------------------------------------------- pages

let browser;
const sockets = [];
const pageErrors = [];
const pages = {}; // name -> { page, kind: "page" | "client", prompts: [] }

async function referencePage(user) {
  const page = await browser.newPage();
  watchPage(page, user, sockets, pageErrors);
  await page.goto(`${lb}/?user=${user}`);
  await waitConnected(page);
  pages[user] = { page, kind: "page", prompts: [] };
}

/**
 * client.js in a blank tab: records every frame it handed to onEvent and, per message, each
 * change it applied to its state (version, status, position).
 */
async function clientTab(user) {
  const page = await browser.newPage();
  watchPage(page, user, sockets, pageErrors);
  await page.goto(`${lb}/healthz`);
  await page.evaluate(async (user) => {
    const { connect, devToken } = await import("/client.js");
    const { token } = await devToken(user);
    const record = { token, frames: [], statuses: [], applied: {} };
    record.client = connect({
      base: location.origin, token, backoff: { min: 200, max: 1000 },
      onEvent: (frame) => record.frames.push(frame),
      onStatus: (status) => record.statuses.push(status),
      onState: (state, ids) => {
        for (const id of ids) {
          const { version, status, queue_position } = state.get(id);
          (record.applied[id] ||= []).push({ version, status, queue_position });
        }
      },
    });
    window.__c = record;
    while (record.client.status !== "open") await new Promise((r) => setTimeout(r, 20));
  }, user);
  pages[user] = { page, kind: "client", prompts: [] };
}

async function send(user, prompt) {
  const entry = pages[user];
  entry.prompts.push(prompt);
  if (entry.kind === "page") {
    // As a user typing fast: Control+Enter sends, the prompt box is cleared and keeps focus.
    const area = entry.page.locator('[data-testid="prompt"]');
    await area.fill(prompt);
    return area.press("Control+Enter");
  }
  await entry.page.evaluate((prompt) => window.__c.client.submit({ prompt, width: 64, height: 64, steps: 1 }), prompt);
}

/** Every message a page or tab shows: { id, prompt, status, imageLoaded }. */
async function shown(user) {
  const { page, kind } = pages[user];
  if (kind === "page") return cards(page);
  return page.evaluate(() => [...window.__c.client.state.values()].map((v) => ({
    id: v.id, prompt: v.prompt, status: v.status, imageLoaded: v.status === "complete" && typeof v.image_url === "string",
  })));
}

async function statusCounts() {
  const counts = {};
  for (const user of Object.keys(pages)) {
    for (const card of await shown(user)) counts[card.status] = (counts[card.status] || 0) + 1;
  }
  return counts;
}

async function rest(pathname, token) {
  const response = await fetch(`${lb}${pathname}`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(response.status, 200, `GET ${pathname}`);
  return response.json();
}

// ---------------------------------------------------------------- the run

before(async () => {
  if (skip) return;
  sims = await Promise.all([startSim("lb-sim-a", LATENCY), startSim("lb-sim-b", LATENCY)]);
  ports = await Promise.all([freePort(), freePort(), freePort()]);
  await startGateway(0);
  lb = await startNginx(await freePort());
  browser = await launchBrowser("chromium-profile-lb");
  console.log(`# nginx ${lb} → ${ports.map((p) => `127.0.0.1:${p}`).join(", ")}; schema and prefix ${tag}`);
});

after(async () => {
  if (skip) return;
  if (browser) await browser.close().catch(() => {});
  await Promise.all([nginx, ...gateways, ...sims].filter(Boolean).map((p) => stopProcess(p)));
  spawnSync("psql", [PG, "-qc", `DROP SCHEMA IF EXISTS ${tag} CASCADE`]);
  spawnSync("sh", ["-c", `redis-cli -u '${REDIS}' --scan --pattern '{${tag}}:*' | xargs -r redis-cli -u '${REDIS}' del >/dev/null`]);
});

test("browsers behind nginx reconnect to another process when theirs is killed and miss nothing, see nothing twice", { skip, timeout: 120000 }, async () => {
  // Three users, all connected through nginx to process 1 (the only one up).
  await referencePage("ayse");
  await referencePage("mehmet");
  await clientTab("zeynep");
  assert.equal(await gauge(gateways[0], "forge_gateway_ws_sessions_open"), 3, "every socket is on process 1");

  // Process 1 took both backend slots at its start and keeps them while it lives (a slot is
  // kept from job to job), so it runs the jobs while 2 and 3 stand by.
  await eventually("process 1 holds both backend slots", async () => {
    assert.equal(await gauge(gateways[0], "forge_gateway_forge_slots_held"), 2);
  });
  await startGateway(1);
  await startGateway(2);

  // FIFO: zeynep's first two complete on process 1, her third and ayse's first are running
  // there when it is killed.
  const first = { zeynep: ["zeynep 1: a cat", "zeynep 2: a dune", "zeynep 3: a bridge"], ayse: ["ayse 1: a lighthouse", "ayse 2: a fox", "ayse 3: a tram"], mehmet: ["mehmet 1: ramen", "mehmet 2: a kite"] };
  for (const [user, prompts] of Object.entries(first)) for (const prompt of prompts) await send(user, prompt);
  await eventually("two jobs complete, two running (on process 1)", async () => {
    const counts = await statusCounts();
    assert.equal(counts.complete, 2, JSON.stringify(counts));
    assert.equal(counts.processing, 2, JSON.stringify(counts));
  }, 30000, 20);
  const requestsBefore = (await Promise.all(sims.map(simStats))).reduce((n, s) => n + s.txt2img_requests, 0);
  const pendingAtKill = {};
  for (const user of Object.keys(pages)) pendingAtKill[user] = (await shown(user)).filter((c) => c.status !== "complete").map((c) => c.id);
  const offline = {};
  for (const user of ["ayse", "mehmet"]) offline[user] = await browser.newCDPSession(pages[user].page);
  // zeynep edits her finished message as process 1 dies: writes in flight, some applied, some
  // not; each is sent again (same ref) after the reconnect and applied once.
  const EDITS = 10;
  const zeynepToken = await pages.zeynep.page.evaluate(() => window.__c.token);
  const edited = (await shown("zeynep")).find((c) => c.status === "complete");
  const editedBefore = await rest(`/api/v1/messages/${edited.id}`, zeynepToken);
  await pages.zeynep.page.evaluate(([id, count]) => {
    window.__c.edits = Promise.all(Array.from({ length: count }, (_, n) => window.__c.client.update(id, { [`edit${n}`]: n })));
  }, [edited.id, EDITS]);
  await stopProcess(gateways[0], "SIGKILL");
  // The two reference pages lose their network too (as a phone does), so jobs of theirs finish
  // while they are away: only the snapshot and the REST reload after it can show them.
  // zeynep's tab reconnects at once and sees its lost job go back to the queue.
  for (const cdp of Object.values(offline)) {
    await cdp.send("Network.emulateNetworkConditions", { offline: true, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  }
  assert.equal(requestsBefore, 4, "process 1 sent four jobs to the backends");
  await eventually("zeynep's tab is open again", async () => {
    const statuses = await pages.zeynep.page.evaluate(() => window.__c.statuses);
    assert.ok(statuses.filter((s) => s === "open").length >= 2, statuses.join(","));
    assert.equal(statuses.at(-1), "open");
  }, 20000);
  const tokens = {};
  for (const user of ["ayse", "mehmet"]) {
    const response = await fetch(`${lb}/api/v1/dev/token`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user }) });
    tokens[user] = (await response.json()).token;
    await eventually(`a job of ${user}'s completes while the page is offline`, async () => {
      const { messages } = await rest("/api/v1/messages?limit=100", tokens[user]);
      assert.ok(messages.some((m) => pendingAtKill[user].includes(m.id) && m.status === "complete"));
    }, 30000, 100);
    assert.notEqual(await connectionText(pages[user].page), "bağlı", `${user} is offline`);
  }
  for (const cdp of Object.values(offline)) {
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  }

  // Every page reconnects through nginx, to process 2 or 3.
  for (const user of ["ayse", "mehmet"]) await waitConnected(pages[user].page, 20000);
  await eventually("three sockets on processes 2 and 3", async () => {
    const open = (await gauge(gateways[1], "forge_gateway_ws_sessions_open")) + (await gauge(gateways[2], "forge_gateway_ws_sessions_open"));
    assert.equal(open, 3);
  }, 10000);
  for (const user of Object.keys(pages)) {
    assert.ok(sockets.filter((s) => s.label === user && s.frames.length > 0).length >= 2, `${user} opened a second socket`);
  }

  // Work sent after the kill goes through nginx to the live processes.
  const later = { ayse: "ayse 4: after the kill", mehmet: "mehmet 3: after the kill", zeynep: "zeynep 4: after the kill" };
  for (const [user, prompt] of Object.entries(later)) await send(user, prompt);

  for (const user of Object.keys(pages)) {
    await eventually(`${user}: every card complete with its image, once`, async () => {
      const list = await shown(user);
      assert.deepEqual(list.map((c) => c.prompt).sort(), [...pages[user].prompts].sort(), "each prompt exactly once");
      assert.equal(new Set(list.map((c) => c.id)).size, list.length, "no card twice");
      for (const card of list) {
        assert.equal(card.status, "complete", card.prompt);
        assert.ok(card.imageLoaded, `${card.prompt}: image`);
      }
    }, 45000, 100);
    if (pages[user].kind === "page") await shot(pages[user].page, `lb-${user}.png`);
  }

  // Each backend ran each job once, and the two lost jobs once more.
  const stats = await Promise.all(sims.map(simStats));
  assert.equal(stats.reduce((n, s) => n + s.txt2img_requests, 0), 11 + 2, JSON.stringify(stats));

  // What each client holds is what REST says; every image (process 1's too) is served by 2 and 3.
  const token = await pages.zeynep.page.evaluate(() => window.__c.token);
  const { messages } = await rest("/api/v1/messages?limit=100", token);
  const held = await pages.zeynep.page.evaluate(() => Object.fromEntries([...window.__c.client.state].map(([id, v]) => [id, JSON.parse(JSON.stringify(v))])));
  assert.equal(messages.length, 4);
  for (const message of messages) {
    const view = held[message.id];
    assert.ok(view, `${message.prompt} in the client's state`);
    for (const field of ["status", "version", "image_url", "seed", "prompt", "data"]) {
      assert.deepEqual(view[field], message[field], `${message.prompt}: ${field}`);
    }
    for (const gateway of gateways.slice(1)) {
      const image = await fetch(`${gateway.url}${message.image_url}`);
      assert.equal(image.status, 200, `${message.image_url} from ${gateway.url}`);
      assert.equal(image.headers.get("content-type"), "image/png");
      await image.arrayBuffer();
    }
  }
  await pages.zeynep.page.evaluate(() => Promise.race([
    window.__c.edits,
    new Promise((_, reject) => setTimeout(() => reject(new Error("edits unacknowledged after 20 s")), 20000)),
  ]));
  const editedAfter = await rest(`/api/v1/messages/${edited.id}`, zeynepToken);
  for (let n = 0; n < EDITS; n++) assert.equal(editedAfter.data[`edit${n}`], n, `edit ${n} lost: ${JSON.stringify(editedAfter.data)}`);
  assert.equal(editedAfter.version, editedBefore.version + EDITS, "each edit applied once");

  // Every change the tab applied was newer than the one before; its third job, lost with
  // process 1, went from processing back to the head of the queue and then ran to the end.
  const applied = await pages.zeynep.page.evaluate(() => window.__c.applied);
  for (const [id, changes] of Object.entries(applied)) {
    const versions = changes.map((c) => c.version);
    versions.forEach((v, i) => assert.ok(i === 0 || v >= versions[i - 1], `${id}: versions applied ${versions}`));
  }
  const third = messages.find((m) => m.prompt === "zeynep 3: a bridge");
  const path3 = applied[third.id].map((c) => c.status).filter((status, i, all) => status !== all[i - 1]);
  assert.deepEqual(path3.slice(-4), ["processing", "queued", "processing", "complete"], `zeynep 3: ${JSON.stringify(applied[third.id])}`);
  assert.ok(applied[third.id].some((c) => c.status === "queued" && c.queue_position === 1 && c.version > applied[third.id].find((x) => x.status === "processing").version),
    `zeynep 3 was shown at position 1 again: ${JSON.stringify(applied[third.id])}`);

  // Nothing delivered twice: at most one job.complete per message and page, across its sockets.
  for (const user of Object.keys(pages)) {
    const completes = new Map();
    for (const socket of sockets.filter((s) => s.label === user)) {
      for (const frame of socket.frames.filter((f) => f.type === "job.complete")) completes.set(frame.id, (completes.get(frame.id) || 0) + 1);
    }
    for (const [id, n] of completes) assert.equal(n, 1, `${user}: job.complete for ${id} ${n} times`);
  }
  for (const user of ["ayse", "mehmet"]) assert.deepEqual(await pages[user].page.evaluate(() => window.__fg.anomalies), [], user);
  assert.deepEqual(await pages.zeynep.page.evaluate(() => window.__c.client.anomalies), []);
  assert.deepEqual(pageErrors, []);
  checkFrames(sockets);
});

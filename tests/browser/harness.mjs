// What the browser tests share: starting and stopping the project's binaries (their output
// mirrored to screenshots/<name>.log), a Chromium of Debian's, polling with a deadline instead
// of sleeps, reading the reference page's cards, and the check that every WebSocket frame a page
// received followed the contract. Each test file imports its own copy (node --test runs a file
// per process), so the process registry and the run folder are per file.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..");
const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(repo, process.env.CARGO_TARGET_DIR)
  : path.join(repo, "target");
const binDir = process.env.FG_BIN_DIR || path.join(targetDir, "debug");
const chromiumPath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
/** Screenshots and process logs land here (ignored by git). */
export const shots = path.join(here, "screenshots");
const headless = process.env.HEADFUL !== "1";


// ---------------------------------------------------------------- processes

const children = new Set();
export const runDir = mkdtempSync(path.join(tmpdir(), "fg-browser-"));
mkdirSync(shots, { recursive: true });

process.on("exit", () => {
  for (const child of children) {
    try { child.kill("SIGKILL"); } catch { /* gone */ }
  }
  rmSync(runDir, { recursive: true, force: true });
});
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => process.exit(130)); // runs the exit handler above
}

const stripAnsi = (text) => text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "");

/**
 * Starts a binary (a name in the cargo target folder, or an absolute path), mirrors its output
 * to screenshots/<name>.log, and resolves when it is ready: by default with the URL of its
 * `listening on http://HOST:PORT` line (pretty or JSON log format); with `ready`, a function
 * that resolves with the URL once the process answers (for programs that print no such line).
 */
export function startProcess(name, bin, args, env, timeoutMs = 30000, ready = null) {
  const log = createWriteStream(path.join(shots, name + ".log"), { flags: "a" });
  log.write(`\n=== ${new Date().toISOString()} ${bin} ${args.join(" ")}\n`);
  const child = spawn(path.resolve(binDir, bin), args, {
    env: { ...process.env, RUST_BACKTRACE: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  const tail = [];
  return new Promise((resolve, reject) => {
    let done = false;
    const timer = setTimeout(() => finish(new Error(`${name}: no "listening on" line within ${timeoutMs} ms\n${tail.join("\n")}`)), timeoutMs);
    function finish(err, url) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) { try { child.kill("SIGKILL"); } catch { /* gone */ } reject(err); } else resolve({ child, url, name });
    }
    if (ready) ready().then((url) => finish(null, url), (err) => finish(err));
    for (const stream of [child.stdout, child.stderr]) {
      let buffered = "";
      stream.on("data", (chunk) => {
        log.write(chunk);
        buffered += chunk.toString("utf8");
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = stripAnsi(buffered.slice(0, nl));
          buffered = buffered.slice(nl + 1);
          tail.push(line);
          if (tail.length > 40) tail.shift();
          const match = !ready && /listening on (http:\/\/[^\s"',]+)/.exec(line);
          if (match) finish(null, match[1].replace(/\/$/, ""));
        }
      });
    }
    child.on("exit", (code, signal) => {
      children.delete(child);
      log.end(`=== exited code=${code} signal=${signal}\n`);
      finish(new Error(`${name} exited (code ${code}, signal ${signal}) before it was ready\n${tail.join("\n")}`));
    });
    child.on("error", (err) => finish(new Error(`${name}: cannot start ${bin}: ${err.message}`)));
  });
}

/** Stops a process and waits for it to be gone. */
export function stopProcess(proc, signal = "SIGTERM", graceMs = 8000) {
  const { child } = proc;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => { try { child.kill("SIGKILL"); } catch { /* gone */ } }, graceMs);
    child.once("exit", () => { clearTimeout(timer); resolve(); });
    try { child.kill(signal); } catch { clearTimeout(timer); resolve(); }
  });
}

export function startSim(name, latency) {
  return startProcess(name, "forge-sim", ["--bind", "127.0.0.1:0", "--latency", latency], {});
}

export async function simConfig(sim, patch) {
  const response = await fetch(sim.url + "/sim/config", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(patch),
  });
  const text = await response.text();
  assert.ok(response.ok, `POST ${sim.url}/sim/config ${JSON.stringify(patch)}: ${response.status} ${text}`);
}

// ---------------------------------------------------------------- polling

/**
 * Calls `check` until it returns without throwing (assertion-style, like Playwright's
 * `expect.poll`), or throws its last error after `timeoutMs`.
 */
export async function eventually(what, check, timeoutMs = 15000, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const err = new Error(`timed out after ${timeoutMs} ms waiting for: ${what}\nlast: ${lastError && lastError.message}`);
      err.cause = lastError;
      throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** What the page shows, card by card, newest first. */
export function cards(page) {
  return page.$$eval('[data-testid="message-card"]', (nodes) =>
    nodes.map((card) => {
      const text = (id) => {
        const node = card.querySelector(`[data-testid="${id}"]`);
        return node && !node.hidden && node.offsetParent !== null ? node.textContent : null;
      };
      const img = card.querySelector('img[data-testid="image"]');
      const progress = card.querySelector('[data-testid="progress"]');
      const preview = card.querySelector('img[data-testid="preview"]');
      return {
        id: card.dataset.id,
        status: card.dataset.status,
        prompt: text("message-prompt"),
        position: text("queue-position"),
        label: text("status"),
        error: text("error-message"),
        hasImage: !!img,
        imageLoaded: !!img && img.complete && img.naturalWidth > 0,
        previewLoaded: !!preview && preview.complete && preview.naturalWidth > 0,
        placeholderMark: text("placeholder-mark"),
        progress: progress ? Number(progress.dataset.value) : null,
        cancelVisible: !!card.querySelector('[data-testid="cancel"]:not([hidden])'),
        retryVisible: !!card.querySelector('[data-testid="retry"]:not([hidden])'),
      };
    }),
  );
}

export const byPrompt = (list, prompt) => list.find((card) => card.prompt === prompt);

export async function connectionText(page) {
  return (await page.locator('[data-testid="connection"]').textContent()).trim();
}

export async function waitConnected(page, timeoutMs = 15000) {
  await eventually("connection indicator says bağlı", async () => {
    assert.equal(await connectionText(page), "bağlı");
  }, timeoutMs);
}

export async function submit(page, prompt) {
  await page.locator('[data-testid="prompt"]').fill(prompt);
  await page.locator('[data-testid="submit"]').click();
}

export async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, name), fullPage: true });
}

export async function cardOf(page, prompt, timeoutMs = 10000) {
  return eventually(`a card for ${JSON.stringify(prompt)}`, async () => {
    const card = byPrompt(await cards(page), prompt);
    assert.ok(card, "no card yet");
    return card;
  }, timeoutMs);
}

export async function waitCard(page, id, what, check, timeoutMs = 15000) {
  return eventually(`card ${id}: ${what}`, async () => {
    const card = (await cards(page)).find((c) => c.id === id);
    assert.ok(card, "card missing");
    check(card);
    return card;
  }, timeoutMs);
}


/** A free TCP port on 127.0.0.1 (free when asked: the caller binds it soon after). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Debian's Chromium as a persistent context, Turkish locale, in the run folder. */
export async function launchBrowser(profile = "chromium-profile") {
  const browser = await chromium.launchPersistentContext(path.join(runDir, profile), {
    executablePath: chromiumPath,
    headless,
    viewport: { width: 1280, height: 860 },
    locale: "tr-TR",
    timezoneId: "Europe/Istanbul",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
    ],
  });
  browser.setDefaultTimeout(15000);
  return browser;
}

/**
 * Records every WebSocket a page opens (with the frames it received) into `sockets`, and the
 * page's uncaught errors and console errors into `pageErrors`.
 */
export function watchPage(page, label, sockets, pageErrors) {
  page.on("websocket", (ws) => {
    const record = { label, url: ws.url(), frames: [], closed: false };
    sockets.push(record);
    ws.on("framereceived", ({ payload }) => {
      try { record.frames.push(JSON.parse(typeof payload === "string" ? payload : payload.toString("utf8"))); } catch {
        record.frames.push({ unparsable: String(payload).slice(0, 200) });
      }
    });
    ws.on("close", () => { record.closed = true; });
  });
  page.on("pageerror", (err) => pageErrors.push(`${label}: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/Failed to load resource|WebSocket connection/.test(msg.text())) {
      pageErrors.push(`${label} console: ${msg.text()}`);
    }
  });
}

/**
 * Checks every frame the recorded sockets received against the contract: hello then snapshot,
 * seq strictly increasing per socket, message events with an id and a version (previews and
 * positions excepted), job.positions in queue order. Prints what it counted.
 */
export function checkFrames(sockets) {
  let events = 0;
  let backwards = 0;
  let versionlessPreviews = 0;
  for (const socket of sockets) {
    const where = `${socket.label} ${socket.url.replace(/token=[^&]+/, "token=…")}`;
    if (socket.frames.length === 0) continue; // refused or closed before a frame
    assert.equal(socket.frames[0].type, "hello", where);
    assert.equal(socket.frames[1] && socket.frames[1].type, "snapshot", where);
    let seq = 0;
    const versions = new Map();
    for (const frame of socket.frames) {
      assert.ok(Number.isInteger(frame.seq) && frame.seq > seq, `${where}: seq ${frame.seq} after ${seq}`);
      seq = frame.seq;
      assert.equal(typeof frame.type, "string");
      if (!frame.type.startsWith("job.") && frame.type !== "message.updated") continue;
      if (frame.type === "job.positions") {
        // Several queued messages of the user, in queue order: no id, no version of its own.
        assert.ok(Array.isArray(frame.positions) && frame.positions.length >= 2, JSON.stringify(frame));
        frame.positions.forEach((entry, i) => {
          assert.equal(typeof entry.id, "string", JSON.stringify(frame));
          assert.ok(Number.isInteger(entry.queue_position) && entry.queue_position >= 1, JSON.stringify(frame));
          if (i > 0) assert.ok(entry.queue_position > frame.positions[i - 1].queue_position, `queue order: ${JSON.stringify(frame)}`);
        });
        continue;
      }
      events++;
      assert.equal(typeof frame.id, "string", JSON.stringify(frame));
      if (frame.type === "job.preview" && frame.version === undefined) {
        // API.md says message events carry the version; this gateway sends previews without one
        // (they change no record). Tolerated, and reported below.
        versionlessPreviews++;
        assert.equal(typeof frame.preview_url, "string", JSON.stringify(frame));
        continue;
      }
      if (frame.type === "job.position") {
        assert.equal(frame.version, undefined, JSON.stringify(frame));
        assert.ok(Number.isInteger(frame.queue_position) && frame.queue_position >= 1, JSON.stringify(frame));
        continue;
      }
      assert.ok(Number.isInteger(frame.version), `version in ${JSON.stringify(frame)}`);
      if (frame.type.startsWith("job.")) assert.ok(["queued", "processing", "complete", "error", "cancelled"].includes(frame.status), JSON.stringify(frame));
      if ((versions.get(frame.id) ?? 0) > frame.version) backwards++;
      versions.set(frame.id, Math.max(versions.get(frame.id) ?? 0, frame.version));
    }
  }
  console.log(`# ${sockets.length} sockets, ${events} message events, ${backwards} with a version lower than an earlier one`);
  if (versionlessPreviews) console.log(`# NOTE: ${versionlessPreviews} job.preview frames had no version (API.md: message events carry one)`);
}

// Real-browser end-to-end test of the reference page (assets/index.html), served by a real
// forge-gateway in front of a real forge-sim, driven with playwright-core and Debian's Chromium.
//
// Two gateway/simulator pairs run side by side, each on free ports and a fresh data dir:
// - "main" (FORGE_TIMEOUT=60s): long generations for queue positions, reload, cancel, XSS and
//   the restart/reconnect scenario;
// - "faults" (FORGE_TIMEOUT=2s, BREAKER_FAILURES=2, BREAKER_OPEN_FOR=10m): the Forge hang
//   (R5.1 message with "(2s)") and the open breaker (placeholder image).
// A single gateway cannot do both: a generation longer than FORGE_TIMEOUT is a timeout, so the
// "blocker" that keeps the backend busy needs a timeout longer than 2s.
//
// Synchronisation is by polling the DOM (or the simulator) until a condition holds, with a
// deadline; there are no fixed sleeps.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..");
const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(repo, process.env.CARGO_TARGET_DIR)
  : path.join(repo, "target");
const binDir = process.env.FG_BIN_DIR || path.join(targetDir, "debug");
const chromiumPath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const shots = path.join(here, "screenshots");
const headless = process.env.HEADFUL !== "1";

const R5_TIMEOUT = "Forge API zaman aşımına uğradı (2s). Lütfen tekrar deneyin.";
const R9_CONNECTION = "Forge API bağlantı hatası. Lütfen sistem yöneticisine bildirin.";

// ---------------------------------------------------------------- processes

const children = new Set();
const runDir = mkdtempSync(path.join(tmpdir(), "fg-browser-"));
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
 * Starts a binary, mirrors its output to screenshots/<name>.log, and resolves with the URL of
 * its `listening on http://HOST:PORT` line (pretty or JSON log format).
 */
function startProcess(name, bin, args, env, timeoutMs = 30000) {
  const log = createWriteStream(path.join(shots, name + ".log"), { flags: "a" });
  log.write(`\n=== ${new Date().toISOString()} ${bin} ${args.join(" ")}\n`);
  const child = spawn(path.join(binDir, bin), args, {
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
          const match = /listening on (http:\/\/[^\s"',]+)/.exec(line);
          if (match) finish(null, match[1].replace(/\/$/, ""));
        }
      });
    }
    child.on("exit", (code, signal) => {
      children.delete(child);
      log.end(`=== exited code=${code} signal=${signal}\n`);
      finish(new Error(`${name} exited (code ${code}, signal ${signal}) before listening\n${tail.join("\n")}`));
    });
    child.on("error", (err) => finish(new Error(`${name}: cannot start ${bin}: ${err.message}`)));
  });
}

/** Stops a process and waits for it to be gone. */
function stopProcess(proc, signal = "SIGTERM", graceMs = 8000) {
  const { child } = proc;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => { try { child.kill("SIGKILL"); } catch { /* gone */ } }, graceMs);
    child.once("exit", () => { clearTimeout(timer); resolve(); });
    try { child.kill(signal); } catch { clearTimeout(timer); resolve(); }
  });
}

function startSim(name, latency) {
  return startProcess(name, "forge-sim", ["--bind", "127.0.0.1:0", "--latency", latency], {});
}

function startGateway(name, { simUrl, dataDir, bind = "127.0.0.1:0", forgeTimeout, previews = false }) {
  return startProcess(name, "forge-gateway", [], {
    FORGE_PREVIEWS: String(previews),
    BIND: bind,
    DATA_DIR: dataDir,
    FORGE_URLS: simUrl,
    DEV_MODE: "true",
    FORGE_TIMEOUT: forgeTimeout,
    BREAKER_FAILURES: "2",
    BREAKER_OPEN_FOR: "10m",
    FORGE_PROGRESS_INTERVAL: "200ms",
    LOG_FORMAT: "json",
  });
}

async function simConfig(sim, patch) {
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
async function eventually(what, check, timeoutMs = 15000, intervalMs = 50) {
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
function cards(page) {
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

const byPrompt = (list, prompt) => list.find((card) => card.prompt === prompt);

async function connectionText(page) {
  return (await page.locator('[data-testid="connection"]').textContent()).trim();
}

async function waitConnected(page, timeoutMs = 15000) {
  await eventually("connection indicator says bağlı", async () => {
    assert.equal(await connectionText(page), "bağlı");
  }, timeoutMs);
}

async function submit(page, prompt) {
  await page.locator('[data-testid="prompt"]').fill(prompt);
  await page.locator('[data-testid="submit"]').click();
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, name), fullPage: true });
}

async function cardOf(page, prompt, timeoutMs = 10000) {
  return eventually(`a card for ${JSON.stringify(prompt)}`, async () => {
    const card = byPrompt(await cards(page), prompt);
    assert.ok(card, "no card yet");
    return card;
  }, timeoutMs);
}

async function waitCard(page, id, what, check, timeoutMs = 15000) {
  return eventually(`card ${id}: ${what}`, async () => {
    const card = (await cards(page)).find((c) => c.id === id);
    assert.ok(card, "card missing");
    check(card);
    return card;
  }, timeoutMs);
}

// ---------------------------------------------------------------- the run

let browser; // a persistent context
let main = {}; // { sim, gateway, dataDir, page }
let faults = {};
const pageErrors = [];
const t0 = Date.now();
const timings = [];

const sockets = []; // every WebSocket the pages opened: { label, url, frames: [parsed server frames] }

function watchPage(page, label) {
  page.on("websocket", (ws) => {
    const record = { label, url: ws.url(), frames: [] };
    sockets.push(record);
    ws.on("framereceived", ({ payload }) => {
      try { record.frames.push(JSON.parse(typeof payload === "string" ? payload : payload.toString("utf8"))); } catch {
        record.frames.push({ unparsable: String(payload).slice(0, 200) });
      }
    });
  });
  page.on("pageerror", (err) => pageErrors.push(`${label}: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/Failed to load resource|WebSocket connection/.test(msg.text())) {
      pageErrors.push(`${label} console: ${msg.text()}`);
    }
  });
}

before(async () => {
  main.dataDir = path.join(runDir, "main-data");
  faults.dataDir = path.join(runDir, "faults-data");
  [main.sim, faults.sim] = await Promise.all([startSim("sim-main", "1500ms"), startSim("sim-faults", "500ms")]);
  [main.gateway, faults.gateway] = await Promise.all([
    startGateway("gateway-main", { simUrl: main.sim.url, dataDir: main.dataDir, forgeTimeout: "60s", previews: true }),
    startGateway("gateway-faults", { simUrl: faults.sim.url, dataDir: faults.dataDir, forgeTimeout: "2s" }),
  ]);
  browser = await chromium.launchPersistentContext(path.join(runDir, "chromium-profile"), {
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
  main.page = browser.pages()[0] || (await browser.newPage());
  watchPage(main.page, "main");
  console.log(`# main gateway ${main.gateway.url} (sim ${main.sim.url}); faults gateway ${faults.gateway.url} (sim ${faults.sim.url}); setup ${Date.now() - t0} ms`);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await Promise.all([main.gateway, faults.gateway, main.sim, faults.sim].filter(Boolean).map((p) => stopProcess(p)));
  for (const { name, ms } of timings) console.log(`# ${name}: ${ms} ms`);
  console.log(`# total ${Date.now() - t0} ms`);
});

function timed(name, fn) {
  return async () => {
    const start = Date.now();
    try {
      await fn();
    } catch (err) {
      for (const page of [main.page, faults.page].filter(Boolean)) {
        await page.screenshot({ path: path.join(shots, `FAILED-${name.replace(/\W+/g, "-")}-${page === main.page ? "main" : "faults"}.png`), fullPage: true }).catch(() => {});
        const frames = await page.evaluate(() => JSON.stringify((window.__fg && window.__fg.frames || []).slice(-30))).catch(() => "?");
        console.log(`# last frames on ${page === main.page ? "main" : "faults"}: ${frames}`);
      }
      throw err;
    } finally {
      timings.push({ name, ms: Date.now() - start });
    }
  };
}

const USER = "ayse";
const BLOCKER = "blocker: a lighthouse in a storm, oil painting";
const THREE = ["first: a red fox in the snow", "second: a tram in Istanbul at dusk", "third: a bowl of ramen, studio light"];
let firstFour = []; // ids of the blocker and the three, for the later scenarios

test("1. three quick prompts behind a busy backend get positions 1, 2, 3", { timeout: 60000 }, timed("1-positions", async () => {
  const page = main.page;
  await page.goto(`${main.gateway.url}/?user=${USER}`);
  await waitConnected(page);
  assert.equal(await page.locator('[data-testid="user-name"]').inputValue(), USER);
  await simConfig(main.sim, { latency: "8s" });

  await submit(page, BLOCKER);
  const blocker = await cardOf(page, BLOCKER);
  await waitCard(page, blocker.id, "processing", (c) => assert.equal(c.status, "processing"));

  // Quickly, without waiting for answers in between; the textarea is cleared and keeps focus.
  const area = page.locator('[data-testid="prompt"]');
  for (const prompt of THREE) {
    await area.fill(prompt);
    await area.press("Control+Enter");
  }
  assert.equal(await area.inputValue(), "");
  assert.ok(await area.evaluate((node) => node === document.activeElement), "the prompt keeps focus");

  const seen = await eventually("4 cards: blocker processing, positions 1, 2, 3", async () => {
    const list = await cards(page);
    assert.equal(list.length, 4);
    assert.deepEqual(list.map((c) => c.prompt), [...THREE].reverse().concat(BLOCKER), "newest first");
    assert.equal(byPrompt(list, BLOCKER).status, "processing");
    assert.equal(byPrompt(list, BLOCKER).position, null);
    THREE.forEach((prompt, i) => {
      const card = byPrompt(list, prompt);
      assert.equal(card.status, "queued", prompt);
      assert.equal(card.position, String(i + 1), prompt);
      assert.equal(card.label, `Sırada: ${i + 1}`);
      assert.ok(card.cancelVisible, "a queued card can be cancelled");
    });
    return list;
  }, 6000);
  firstFour = seen.map((c) => ({ id: c.id, prompt: c.prompt, status: c.status, position: c.position }));
  // FORGE_PREVIEWS is on: the running blocker shows a live preview and a moving progress bar.
  await waitCard(page, blocker.id, "a live preview and some progress", (c) => {
    assert.equal(c.status, "processing");
    assert.ok(c.previewLoaded, "preview image loaded");
    assert.ok(c.progress > 0 && c.progress < 100, `progress ${c.progress}`);
  }, 5000);
  await shot(page, "01-positions.png");
}));

test("2. a reload mid-queue shows the same cards, statuses and positions", { timeout: 30000 }, timed("2-reload", async () => {
  const page = main.page;
  await page.reload();
  await waitConnected(page);
  await eventually("the same 4 cards after the reload", async () => {
    const list = await cards(page);
    assert.deepEqual(
      list.map((c) => ({ id: c.id, prompt: c.prompt, status: c.status, position: c.position })),
      firstFour,
    );
  }, 6000);
  await shot(page, "02-reload.png");
}));

test("3. positions move when the blocker completes, and every card completes with its image", { timeout: 60000 }, timed("3-complete", async () => {
  const page = main.page;
  // The rest may go faster; the blocker keeps the latency it started with.
  await simConfig(main.sim, { latency: "2s" });
  await eventually("blocker complete, then processing, 1, 2", async () => {
    const list = await cards(page);
    assert.equal(byPrompt(list, BLOCKER).status, "complete");
    assert.equal(byPrompt(list, THREE[0]).status, "processing");
    assert.equal(byPrompt(list, THREE[0]).position, null);
    assert.equal(byPrompt(list, THREE[1]).position, "1");
    assert.equal(byPrompt(list, THREE[2]).position, "2");
  }, 15000, 25);
  await eventually("every card complete with a loaded image", async () => {
    const list = await cards(page);
    assert.equal(list.length, 4);
    for (const card of list) {
      assert.equal(card.status, "complete", card.prompt);
      assert.ok(card.imageLoaded, `image of ${card.prompt} loaded`);
      assert.equal(card.placeholderMark, null);
      assert.equal(card.position, null);
      assert.ok(!card.cancelVisible);
    }
  }, 20000);
  await simConfig(main.sim, { latency: "1500ms" });
  await shot(page, "03-complete.png");
}));

test("4. a Forge hang ends in the exact R5.1 error; retry makes a new job that completes", { timeout: 60000 }, timed("4-timeout-retry", async () => {
  // The faults gateway, with a stale token from another server in sessionStorage first: the
  // page must get a new one for the same name by itself.
  const page = faults.page = await browser.newPage();
  watchPage(page, "faults");
  await page.goto(`${faults.gateway.url}/healthz`);
  const staleToken = await main.page.evaluate((user) => JSON.parse(sessionStorage.getItem("fg:token:" + user)).token, USER);
  await page.evaluate(([user, token]) => {
    sessionStorage.setItem("fg:token:" + user, JSON.stringify({ token, expires_at: null }));
  }, [USER, staleToken]);
  await page.goto(`${faults.gateway.url}/?user=${USER}`);
  await waitConnected(page);

  await simConfig(faults.sim, { mode: "hang" });
  const prompt = "hang: a clock that never strikes";
  await submit(page, prompt);
  const failed = await cardOf(page, prompt);
  const errorCard = await waitCard(page, failed.id, "error with the R5.1 message", (c) => {
    assert.equal(c.status, "error");
    assert.equal(c.error, R5_TIMEOUT);
  }, 15000);
  assert.equal(errorCard.hasImage, false, "no image on a timeout (R5.3)");
  assert.ok(errorCard.retryVisible);
  assert.equal(errorCard.label, "Hata");

  await simConfig(faults.sim, { mode: "normal" });
  await page.locator(`[data-testid="message-card"][data-id="${failed.id}"] [data-testid="retry"]`).click();
  const retried = await eventually("a new card for the retry", async () => {
    const list = await cards(page);
    assert.equal(list.length, 2);
    assert.notEqual(list[0].id, failed.id);
    assert.equal(list[0].prompt, prompt);
    return list[0];
  });
  await waitCard(page, retried.id, "the retry completes with an image", (c) => {
    assert.equal(c.status, "complete");
    assert.ok(c.imageLoaded);
    assert.equal(c.placeholderMark, null);
  }, 15000);
  // The failed card stays as it was.
  await waitCard(page, failed.id, "still the error", (c) => assert.equal(c.error, R5_TIMEOUT));
  await shot(page, "04-timeout-retry.png");
}));

test("5. two connection errors open the breaker; the next prompt gets the placeholder", { timeout: 60000 }, timed("5-breaker", async () => {
  const page = faults.page;
  await simConfig(faults.sim, { mode: "reset" });
  const failing = ["reset one: a bridge", "reset two: a tunnel"];
  for (const prompt of failing) await submit(page, prompt);
  for (const prompt of failing) {
    const card = await cardOf(page, prompt);
    await waitCard(page, card.id, "connection error (R9.1)", (c) => {
      assert.equal(c.status, "error");
      assert.equal(c.error, R9_CONNECTION);
      assert.equal(c.hasImage, false);
    }, 15000);
  }
  const prompt = "breaker open: a quiet harbour";
  await submit(page, prompt);
  const card = await cardOf(page, prompt);
  await waitCard(page, card.id, "complete with the placeholder mark and a loaded image", (c) => {
    assert.equal(c.status, "complete");
    assert.ok(c.imageLoaded);
    assert.equal(c.placeholderMark, "Geçici görsel");
  }, 15000);
  const title = await page.locator(`[data-testid="message-card"][data-id="${card.id}"] [data-testid="placeholder-mark"]`).getAttribute("title");
  assert.ok(title && title.length > 10, `the mark explains itself: ${title}`);
  await shot(page, "05-breaker-placeholder.png");
}));

test("6. a prompt with HTML shows as text and runs nothing", { timeout: 30000 }, timed("6-xss", async () => {
  const page = main.page;
  const prompt = `<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>`;
  await submit(page, prompt);
  const card = await cardOf(page, prompt);
  await waitCard(page, card.id, "complete", (c) => assert.equal(c.status, "complete"), 15000);
  assert.equal(await page.evaluate(() => typeof window.__xss), "undefined");
  const inner = page.locator(`[data-testid="message-card"][data-id="${card.id}"]`);
  assert.equal(await inner.locator('img[src="x"], script').count(), 0);
  // After a reload (the prompt now comes from REST) still only text.
  await page.reload();
  await waitConnected(page);
  await cardOf(page, prompt);
  assert.equal(await page.evaluate(() => typeof window.__xss), "undefined");
  assert.equal(await page.locator('[data-testid="message-card"] img[src="x"]').count(), 0);
  await shot(page, "06-xss.png");
}));

test("7. cancel turns a queued card (and a processing one) into cancelled", { timeout: 60000 }, timed("7-cancel", async () => {
  const page = main.page;
  await simConfig(main.sim, { latency: "20s" });
  const blocker = "cancel blocker: a very slow sunrise";
  const victim = "to be cancelled: a paper boat";
  await submit(page, blocker);
  const busy = await cardOf(page, blocker);
  await waitCard(page, busy.id, "processing", (c) => assert.equal(c.status, "processing"));
  await submit(page, victim);
  const queued = await cardOf(page, victim);
  await waitCard(page, queued.id, "queued at 1", (c) => {
    assert.equal(c.status, "queued");
    assert.equal(c.position, "1");
  });
  await page.locator(`[data-testid="message-card"][data-id="${queued.id}"] [data-testid="cancel"]`).click();
  await waitCard(page, queued.id, "cancelled", (c) => {
    assert.equal(c.status, "cancelled");
    assert.equal(c.label, "İptal edildi");
    assert.equal(c.position, null);
    assert.ok(!c.cancelVisible);
    assert.equal(c.hasImage, false);
  });
  await page.locator(`[data-testid="message-card"][data-id="${busy.id}"] [data-testid="cancel"]`).click();
  await waitCard(page, busy.id, "processing job cancelled", (c) => {
    assert.equal(c.status, "cancelled");
    assert.equal(c.progress, null);
    assert.ok(!c.cancelVisible);
  });
  await simConfig(main.sim, { latency: "1500ms" });
  await shot(page, "07-cancel.png");
  // The backend is free again: a new job runs (the cancelled generation did not wedge it).
  const after = "after cancel: a lantern";
  await submit(page, after);
  const next = await cardOf(page, after);
  await waitCard(page, next.id, "complete after the cancellations", (c) => assert.equal(c.status, "complete"), 30000);
}));

test("8. the page reconnects by itself to a restarted gateway and shows the same cards", { timeout: 60000 }, timed("8-reconnect", async () => {
  const page = main.page;
  await waitConnected(page);
  const before = (await cards(page)).map((c) => ({ id: c.id, status: c.status, prompt: c.prompt }));
  assert.ok(before.length >= 8, `cards so far: ${before.length}`);
  await page.evaluate(() => { window.__sameDocument = true; });
  const port = new URL(main.gateway.url).port;

  await stopProcess(main.gateway, "SIGKILL");
  await eventually("indicator says bağlantı yok", async () => {
    assert.equal(await connectionText(page), "bağlantı yok");
  }, 10000);
  await shot(page, "08a-disconnected.png");

  main.gateway = await eventually("the gateway restarts on the same port", () =>
    startGateway("gateway-main", { simUrl: main.sim.url, dataDir: main.dataDir, bind: `127.0.0.1:${port}`, forgeTimeout: "60s", previews: true }),
  20000, 250);
  assert.equal(new URL(main.gateway.url).port, port);
  await waitConnected(page, 20000);
  assert.equal(await page.evaluate(() => window.__sameDocument), true, "no page reload happened");
  await eventually("the same cards after the restart", async () => {
    const now = (await cards(page)).map((c) => ({ id: c.id, status: c.status, prompt: c.prompt }));
    assert.deepEqual(now, before);
  }, 10000);
  // And it is live again: a new prompt runs through the restarted gateway.
  const prompt = "after restart: a phoenix";
  await submit(page, prompt);
  const card = await cardOf(page, prompt);
  await waitCard(page, card.id, "complete after the restart", (c) => {
    assert.equal(c.status, "complete");
    assert.ok(c.imageLoaded);
  }, 20000);
  await shot(page, "08-reconnect.png");
}));

test("no uncaught page errors; the pages saw no anomalies", async () => {
  assert.deepEqual(pageErrors, []);
  for (const page of [main.page, faults.page].filter(Boolean)) {
    assert.deepEqual(await page.evaluate(() => window.__fg.anomalies), []);
  }
});

test("every WebSocket frame followed the contract", () => {
  assert.ok(sockets.length >= 4, `sockets seen: ${sockets.length}`);
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
});

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
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import {
  runDir, shots, startProcess, stopProcess, startSim, simConfig, eventually, cards, byPrompt,
  connectionText, waitConnected, submit, shot, cardOf, waitCard, launchBrowser, watchPage, checkFrames,
} from "./harness.mjs";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

const R5_TIMEOUT = "Forge API zaman aşımına uğradı (2s). Lütfen tekrar deneyin.";
const R9_CONNECTION = "Forge API bağlantı hatası. Lütfen sistem yöneticisine bildirin.";

// ---------------------------------------------------------------- processes

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
    MODELS_REFRESH: "200ms",
    LOG_FORMAT: "json",
  });
}

// ---------------------------------------------------------------- the run

let browser; // a persistent context
let main = {}; // { sim, gateway, dataDir, page }
let faults = {};
const pageErrors = [];
const t0 = Date.now();
const timings = [];

const sockets = []; // every WebSocket the pages opened: { label, url, frames: [parsed server frames] }


before(async () => {
  main.dataDir = path.join(runDir, "main-data");
  faults.dataDir = path.join(runDir, "faults-data");
  [main.sim, faults.sim] = await Promise.all([startSim("sim-main", "1500ms"), startSim("sim-faults", "500ms")]);
  [main.gateway, faults.gateway] = await Promise.all([
    startGateway("gateway-main", { simUrl: main.sim.url, dataDir: main.dataDir, forgeTimeout: "60s", previews: true }),
    startGateway("gateway-faults", { simUrl: faults.sim.url, dataDir: faults.dataDir, forgeTimeout: "2s" }),
  ]);
  browser = await launchBrowser();
  main.page = browser.pages()[0] || (await browser.newPage());
  watchPage(main.page, "main", sockets, pageErrors);
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
  watchPage(page, "faults", sockets, pageErrors);
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

// ---------------------------------------------------------------- client.js

/**
 * A fresh tab on the main gateway with client.js imported and helpers on `window.__t`:
 * `open(name, options)` connects a client recording its frames, statuses and every position
 * it showed; `FakeSocket` is a WebSocket stand-in the test drives (for WebSocketImpl).
 */
async function clientPage(user) {
  const page = await browser.newPage();
  page.on("pageerror", (err) => pageErrors.push(`client page ${user}: ${err.message}`));
  await page.goto(`${main.gateway.url}/healthz`);
  await page.evaluate(async (user) => {
    const { connect, devToken, GatewayError } = await import("/client.js");
    const { token } = await devToken(user);
    class FakeSocket extends EventTarget {
      static all = [];
      constructor(url) {
        super();
        this.url = url;
        this.sent = [];
        this.readyState = 0;
        this.createdAt = Date.now();
        FakeSocket.all.push(this);
        setTimeout(() => { this.readyState = 1; this.dispatchEvent(new Event("open")); }, 0);
      }
      send(text) { this.sent.push(JSON.parse(text)); }
      close() {
        // As a browser's: the close event follows, asynchronously.
        if (this.readyState === 3) return;
        this.readyState = 3;
        setTimeout(() => this.dispatchEvent(new CloseEvent("close", { code: 1000 })), 0);
      }
      deliver(frame) { this.dispatchEvent(new MessageEvent("message", { data: JSON.stringify(frame) })); }
      serverClose() { this.readyState = 3; this.closedAt = Date.now(); this.dispatchEvent(new CloseEvent("close", { code: 1001 })); }
    }
    const fetches = [];
    const fetchImpl = (url, init) => {
      const where = new URL(url, location.href);
      fetches.push(((init && init.method) || "GET") + " " + where.pathname + where.search);
      return fetch(url, init);
    };
    const clients = {};
    function open(name, options = {}) {
      const record = { frames: [], statuses: [], shown: {} };
      record.client = connect({
        base: location.origin, token, fetchImpl,
        onEvent: (frame) => record.frames.push(frame),
        onStatus: (status) => record.statuses.push(status),
        onState: (state, ids) => {
          for (const id of ids) {
            const view = state.get(id);
            if (view.status === "queued" && view.queue_position != null) (record.shown[id] ||= []).push(view.queue_position);
          }
        },
        ...options,
      });
      clients[name] = record;
      return record.client;
    }
    const view = (name, id) => { const v = clients[name].client.state.get(id); return v ? JSON.parse(JSON.stringify(v)) : null; };
    window.__t = { token, open, clients, view, FakeSocket, fetches, GatewayError };
  }, user);
  return page;
}

const view = (page, name, id) => page.evaluate(([name, id]) => window.__t.view(name, id), [name, id]);

async function waitView(page, name, id, what, check, timeoutMs = 15000) {
  return eventually(`${name}: ${id} ${what}`, async () => {
    const current = await view(page, name, id);
    assert.ok(current, "not in the state yet");
    check(current);
    return current;
  }, timeoutMs);
}

async function restCall(method, path, token, body) {
  const response = await fetch(main.gateway.url + path, {
    method,
    headers: { Authorization: "Bearer " + token, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const answer = await response.json();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${JSON.stringify(answer)}`);
  return answer;
}

test("9. client.js on a real gateway: snapshot on load, live job.positions, cancel, retry with the seed, update, GatewayError", { timeout: 90000 }, timed("9-client", async () => {
  // The gateway serves this tree's client.js and page (a stale binary would test others).
  for (const [route, file] of [["/client.js", "client.js"], ["/", "index.html"]]) {
    const served = await (await fetch(main.gateway.url + route)).text();
    assert.ok(served === readFileSync(path.join(repo, "assets", file), "utf8"), `${route} is assets/${file}: rebuild the binaries`);
  }
  const page = await clientPage("kemal");
  try {
    await simConfig(main.sim, { latency: "8s" });
    await page.evaluate(() => window.__t.open("a"));
    await eventually("client a open", async () => {
      assert.equal(await page.evaluate(() => window.__t.clients.a.client.status), "open");
    });
    const submit = (prompt) => page.evaluate((prompt) => window.__t.clients.a.client.submit({ prompt, width: 64, height: 64, steps: 4 }), prompt);
    const blocker = await submit("client blocker: a slow glacier");
    await waitView(page, "a", blocker.id, "processing", (v) => assert.equal(v.status, "processing"));
    const first = await submit("client first: a kite");
    const second = await submit("client second: a lantern");
    await waitView(page, "a", second.id, "at 2 behind the first at 1", async (v) => {
      assert.equal(v.queue_position, 2);
    });
    assert.equal((await view(page, "a", first.id)).queue_position, 1);
    await eventually("a job.positions frame with both", async () => {
      const frames = await page.evaluate(() => window.__t.clients.a.frames.filter((f) => f.type === "job.positions"));
      assert.ok(frames.some((f) => f.positions.length === 2), JSON.stringify(frames));
    });

    // A second client (another tab) gets everything pending in its snapshot on load.
    await page.evaluate(() => window.__t.open("b"));
    await eventually("client b open with the snapshot", async () => {
      const b = await page.evaluate(() => ({ status: window.__t.clients.b.client.status, frames: window.__t.clients.b.frames.slice(0, 2) }));
      assert.equal(b.status, "open");
      assert.deepEqual(b.frames.map((f) => f.type), ["hello", "snapshot"]);
      assert.equal(b.frames[0].user, "kemal");
      assert.deepEqual(b.frames[1].messages.map((m) => [m.id, m.status, m.queue_position]),
        [[blocker.id, "processing", null], [first.id, "queued", 1], [second.id, "queued", 2]]);
    });
    assert.equal((await view(page, "b", second.id)).queue_position, 2);

    // cancel: a queued one, then the running blocker; the other client hears it.
    const cancelled = await page.evaluate((id) => window.__t.clients.a.client.cancel(id), second.id);
    assert.equal(cancelled.status, "cancelled");
    await waitView(page, "b", second.id, "cancelled in the other tab", (v) => assert.equal(v.status, "cancelled"));
    await simConfig(main.sim, { latency: "1500ms" });
    await page.evaluate((id) => window.__t.clients.a.client.cancel(id), blocker.id);
    await waitView(page, "a", blocker.id, "cancelled", (v) => assert.equal(v.status, "cancelled"));
    const done = await waitView(page, "a", first.id, "complete with the seed Forge used", (v) => {
      assert.equal(v.status, "complete");
      assert.ok(Number.isInteger(v.seed), `seed ${v.seed}`);
      assert.equal(v.queue_position, null);
    }, 20000);
    await waitView(page, "b", first.id, "complete in the other tab too", (v) => assert.equal(v.seed, done.seed));

    // retry with the same seed: a new message that asks for Forge's seed and gets it.
    const again = await page.evaluate((id) => window.__t.clients.a.client.retry(id, { reuseSeed: true }), first.id);
    assert.equal(again.retry_of, first.id);
    assert.equal(again.params.seed, done.seed);
    await waitView(page, "a", again.id, "the retry completes with the same seed", (v) => {
      assert.equal(v.status, "complete");
      assert.equal(v.seed, done.seed);
    }, 20000);
    // retry of the cancelled one, without reuse_seed.
    const plain = await page.evaluate((id) => window.__t.clients.a.client.retry(id), second.id);
    assert.equal(plain.retry_of, second.id);
    assert.equal(plain.params.seed, -1);
    await waitView(page, "a", plain.id, "complete", (v) => assert.equal(v.status, "complete"), 20000);

    // update: client data, merged, and heard by the other tab as message.updated.
    const updated = await page.evaluate((id) => window.__t.clients.a.client.update(id, { liked: true }), first.id);
    assert.deepEqual(updated.data, { liked: true });
    await waitView(page, "b", first.id, "data from message.updated", (v) => assert.deepEqual(v.data, { liked: true }));

    // A refused call throws a GatewayError with status, code, message and field.
    const refused = await page.evaluate(async (id) => {
      try { await window.__t.clients.a.client.cancel(id); return null; } catch (err) {
        return { isGatewayError: err instanceof window.__t.GatewayError, status: err.status, code: err.code, message: err.message, field: err.field };
      }
    }, first.id);
    assert.deepEqual({ ...refused, message: typeof refused.message }, { isGatewayError: true, status: 409, code: "conflict", message: "string", field: null });
    const invalid = await page.evaluate(async () => {
      try { await window.__t.clients.a.client.submit({ prompt: "x", width: 65 }); return null; } catch (err) { return { status: err.status, code: err.code, field: err.field }; }
    });
    assert.deepEqual(invalid, { status: 422, code: "validation", field: "width" });

    // list(), and positions never went back in either client.
    const listed = await page.evaluate(() => window.__t.clients.a.client.list({ status: "complete", limit: 10 }));
    assert.deepEqual(new Set(listed.map((m) => m.id)), new Set([first.id, again.id, plain.id]));
    const shown = await page.evaluate(() => [window.__t.clients.a.shown, window.__t.clients.b.shown]);
    for (const perId of shown) {
      for (const [id, positions] of Object.entries(perId)) {
        assert.deepEqual(positions, [...positions].sort((x, y) => y - x), `positions of ${id} went back: ${positions}`);
      }
    }
    // close(): closed for good.
    await page.evaluate(() => { window.__t.clients.a.client.close(); window.__t.clients.b.client.close(); });
    assert.deepEqual(await page.evaluate(() => [window.__t.clients.a.client.status, window.__t.clients.b.client.status]), ["closed", "closed"]);
  } finally {
    await simConfig(main.sim, { latency: "1500ms" });
    await page.close();
  }
}));

test("10. client.js: a seq gap or a resync frame reloads over REST and asks for a snapshot; versions and positions hold", { timeout: 60000 }, timed("10-client-gap", async () => {
  const page = await clientPage("leyla");
  try {
    const token = await page.evaluate(() => window.__t.token);
    const created = async (prompt) => {
      const message = await restCall("POST", "/api/v1/messages", token, { prompt, width: 64, height: 64, steps: 4 });
      await eventually(`${prompt} complete`, async () => {
        assert.equal((await restCall("GET", `/api/v1/messages/${message.id}`, token)).status, "complete");
      }, 20000);
      return message.id;
    };
    const one = await created("gap one: a pebble");
    await page.evaluate(() => window.__t.open("fake", { WebSocketImpl: window.__t.FakeSocket, keepaliveMs: 0 }));
    const socket = (code, arg) => page.evaluate(code, arg);
    await eventually("the fake socket is open", async () => {
      assert.equal(await socket(() => window.__t.FakeSocket.all.length && window.__t.FakeSocket.all[0].readyState), 1);
    });
    const url = await socket(() => window.__t.FakeSocket.all[0].url);
    assert.match(url, /^ws:\/\/127\.0\.0\.1:\d+\/ws\?token=/);
    const queuedId = "0193e3a4-7b2c-7d10-9a51-3f6c2b8e4d01"; // a queued message only the fake knows
    const fakeQueued = { ...(await restCall("GET", `/api/v1/messages/${one}`, token)), id: queuedId, status: "queued",
      queue_position: 3, eta_s: null, image_url: null, seed: null, progress: 0, version: 1, finished_at: null, started_at: null };
    await socket((queued) => {
      const ws = window.__t.FakeSocket.all[0];
      ws.deliver({ seq: 1, type: "hello", user: "leyla", server_time: new Date().toISOString() });
      ws.deliver({ seq: 2, type: "snapshot", messages: [queued] });
    }, fakeQueued);
    await waitView(page, "fake", one, "loaded over REST after the snapshot", (v) => assert.equal(v.status, "complete"));
    assert.equal((await view(page, "fake", queuedId)).queue_position, 3);
    const lists = () => socket(() => window.__t.fetches.filter((f) => f.startsWith("GET /api/v1/messages?")).length);
    const resyncsSent = () => socket(() => window.__t.FakeSocket.all[0].sent.filter((c) => c.type === "resync").length);

    // Positions: forward yes, back no; versions: an older event is never applied.
    await socket((id) => {
      const ws = window.__t.FakeSocket.all[0];
      ws.deliver({ seq: 3, type: "job.position", id, status: "queued", queue_position: 2, eta_s: 9 });
      ws.deliver({ seq: 4, type: "job.positions", positions: [{ id, queue_position: 3, eta_s: 12 }, { id: "0193e3a4-7b2c-7d10-9a51-3f6c2b8e4d02", queue_position: 4, eta_s: null }] });
    }, queuedId);
    assert.equal((await view(page, "fake", queuedId)).queue_position, 2, "a position never goes back");
    await socket((id) => window.__t.FakeSocket.all[0].deliver({ seq: 5, type: "job.error", id, version: 1, status: "error", error: { code: "unknown", message: "old" } }), one);
    assert.equal((await view(page, "fake", one)).status, "complete", "an older version is not applied");
    await new Promise((resolve) => setTimeout(resolve, 300));
    const listsBefore = await lists();
    assert.equal(await resyncsSent(), 0, "no resync without a reason");

    // A seq gap: 6 is missing. A message made meanwhile comes in over REST.
    const two = await created("gap two: a shell");
    await socket(() => window.__t.FakeSocket.all[0].deliver({ seq: 7, type: "pong" }));
    await eventually("the gap led to a REST reload and a resync request", async () => {
      assert.ok((await lists()) > listsBefore, "no GET /api/v1/messages after the gap");
      assert.equal(await resyncsSent(), 1);
    });
    await waitView(page, "fake", two, "loaded over REST after the gap", (v) => assert.equal(v.status, "complete"));
    // The answer to resync: a snapshot says where the queued one is now (even further back).
    await socket((queued) => window.__t.FakeSocket.all[0].deliver({ seq: 8, type: "snapshot", messages: [{ ...queued, queue_position: 4 }] }), fakeQueued);
    assert.equal((await view(page, "fake", queuedId)).queue_position, 4, "a newer snapshot may move a position back");

    // A resync frame.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const listsBeforeResync = await lists();
    const three = await created("gap three: a feather");
    await socket(() => window.__t.FakeSocket.all[0].deliver({ seq: 9, type: "resync" }));
    await eventually("the resync frame led to a REST reload and a resync request", async () => {
      assert.ok((await lists()) > listsBeforeResync);
      assert.equal(await resyncsSent(), 2);
    });
    await waitView(page, "fake", three, "loaded over REST after resync", (v) => assert.equal(v.status, "complete"));
    assert.deepEqual(await socket(() => window.__t.clients.fake.client.anomalies), []);
    await socket(() => window.__t.clients.fake.client.close());
  } finally {
    await page.close();
  }
}));

test("11. client.js reconnects with a growing, jittered, capped backoff after the server closes the socket, and not after close()", { timeout: 60000 }, timed("11-client-reconnect", async () => {
  const page = await clientPage("nazli");
  try {
    await page.evaluate(() => window.__t.open("fake", { WebSocketImpl: window.__t.FakeSocket, keepaliveMs: 0, backoff: { min: 200, max: 800 } }));
    const sockets = () => page.evaluate(() => window.__t.FakeSocket.all.length);
    await eventually("one socket", async () => assert.equal(await sockets(), 1));
    const greet = (n) => page.evaluate((n) => {
      const ws = window.__t.FakeSocket.all[n];
      ws.deliver({ seq: 1, type: "hello", user: "nazli", server_time: new Date().toISOString() });
      ws.deliver({ seq: 2, type: "snapshot", messages: [] });
    }, n);
    await eventually("socket 0 open", async () => assert.equal(await page.evaluate(() => window.__t.FakeSocket.all[0].readyState), 1));
    await greet(0);
    // Closes without a snapshot in between: each wait within [ceiling/2, ceiling], ceilings 200, 400, 800, 800.
    const waits = [];
    for (let n = 0; n < 4; n++) {
      await page.evaluate((n) => window.__t.FakeSocket.all[n].serverClose(), n);
      await eventually(`socket ${n + 1} made`, async () => assert.equal(await sockets(), n + 2), 5000, 10);
      waits.push(await page.evaluate((n) => window.__t.FakeSocket.all[n + 1].createdAt - window.__t.FakeSocket.all[n].closedAt, n));
      await eventually(`socket ${n + 1} open`, async () => assert.equal(await page.evaluate((n) => window.__t.FakeSocket.all[n].readyState, n + 1), 1));
    }
    [200, 400, 800, 800].forEach((ceiling, n) => {
      assert.ok(waits[n] >= ceiling / 2 - 5 && waits[n] <= ceiling + 250, `wait ${n}: ${waits[n]} ms for a ceiling of ${ceiling} (all: ${waits})`);
    });
    // A snapshot resets the backoff; the status went connecting → open → closed → connecting …
    await greet(4);
    assert.equal(await page.evaluate(() => window.__t.clients.fake.client.status), "open");
    await page.evaluate(() => window.__t.FakeSocket.all[4].serverClose());
    await eventually("socket 5 made soon after the reset", async () => assert.equal(await sockets(), 6), 5000, 10);
    const reset = await page.evaluate(() => window.__t.FakeSocket.all[5].createdAt - window.__t.FakeSocket.all[4].closedAt);
    assert.ok(reset <= 200 + 250, `after a snapshot the first wait is short again: ${reset} ms`);
    const statuses = await page.evaluate(() => window.__t.clients.fake.statuses);
    assert.deepEqual(statuses.slice(0, 5), ["connecting", "open", "closed", "connecting", "closed"]);
    // close(): no socket after it, however long we wait.
    await page.evaluate(() => window.__t.clients.fake.client.close());
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(await sockets(), 6, "no reconnect after close()");
    assert.equal(await page.evaluate(() => window.__t.clients.fake.client.status), "closed");
  } finally {
    await page.close();
  }
}));

test("12. a complete card shows the seed Forge used; 'Aynı tohumla tekrar' makes a card with the same seed", { timeout: 60000 }, timed("12-seed", async () => {
  const page = main.page;
  await waitConnected(page);
  const prompt = "seed: a copper kettle";
  await submit(page, prompt);
  const card = await cardOf(page, prompt);
  await waitCard(page, card.id, "complete", (c) => assert.equal(c.status, "complete"), 20000);
  const seedOf = (id) => page.locator(`[data-testid="message-card"][data-id="${id}"] [data-testid="seed"]`).textContent();
  const seed = await page.evaluate((id) => window.__fg.client.state.get(id).seed, card.id);
  assert.ok(Number.isInteger(seed));
  assert.equal(await seedOf(card.id), `tohum ${seed}`);
  await page.locator(`[data-testid="message-card"][data-id="${card.id}"] [data-testid="retry-same-seed"]`).click();
  const retried = await eventually("a new card for the same-seed retry", async () => {
    const list = await cards(page);
    assert.equal(list[0].prompt, prompt);
    assert.notEqual(list[0].id, card.id);
    return list[0];
  });
  await waitCard(page, retried.id, "complete", (c) => assert.equal(c.status, "complete"), 20000);
  assert.equal(await seedOf(retried.id), `tohum ${seed}`);
  await shot(page, "12-seed.png");
}));

test("13. the page: position unknown, live job.positions that never go back, and a seq gap reloads (mocked gateway)", { timeout: 60000 }, timed("13-page-mocked", async () => {
  const page = await browser.newPage();
  page.on("pageerror", (err) => pageErrors.push(`mocked page: ${err.message}`));
  const base = main.gateway.url;
  const at = new Date().toISOString();
  const make = (n, extra) => ({
    id: `0193e3a4-7b2c-7d10-9a51-3f6c2b8e4d1${n}`, conversation_id: null, status: "queued", progress: 0,
    queue_position: null, position_unavailable: false, eta_s: null, image_url: null, placeholder: false, notice: null,
    error: null, preview_url: null, seed: null, prompt: `mocked ${n}`, data: {}, retry_of: null, version: 1,
    params: { negative_prompt: "", width: 64, height: 64, steps: 4, cfg_scale: 7, sampler_name: "Euler a", seed: -1 },
    created_at: at.replace("Z", `${n}Z`), updated_at: at, started_at: null, finished_at: null, ...extra,
  });
  const a = make(1, { position_unavailable: true });
  const b = make(2, { queue_position: 2 });
  let lists = 0;
  await page.route(`${base}/api/v1/dev/token`, (route) => route.fulfill({ json: { token: "mock.token.x", user: "mock", expires_at: "2099-01-01T00:00:00Z" } }));
  await page.route(/\/api\/v1\/messages\?/, (route) => { lists++; return route.fulfill({ json: { messages: [b, a] } }); });
  await page.route(/\/api\/v1\/messages\/[^?]+$/, (route) => route.fulfill({ status: 404, json: { error: { code: "not_found", message: "Mesaj bulunamadı.", field: null } } }));
  let server = null;
  const fromPage = [];
  await page.routeWebSocket(/\/ws\?token=/, (ws) => {
    server = ws;
    ws.onMessage((message) => fromPage.push(JSON.parse(message)));
    ws.send(JSON.stringify({ seq: 1, type: "hello", user: "mock", server_time: at }));
    ws.send(JSON.stringify({ seq: 2, type: "snapshot", messages: [a, b] }));
  });
  try {
    await page.goto(`${base}/?user=mock`);
    await waitConnected(page);
    const unknown = page.locator(`[data-testid="message-card"][data-id="${a.id}"] [data-testid="position-unknown"]`);
    await eventually("sıra bilinmiyor on the card", async () => assert.equal(await unknown.textContent(), "sıra bilinmiyor"));
    await shot(page, "13-position-unknown.png");
    const positions = async () => Object.fromEntries((await cards(page)).map((c) => [c.id, c.position]));
    assert.deepEqual(await positions(), { [a.id]: null, [b.id]: "2" });
    server.send(JSON.stringify({ seq: 3, type: "job.positions", positions: [{ id: b.id, queue_position: 1, eta_s: 4 }, { id: a.id, queue_position: 2, eta_s: 8 }] }));
    await eventually("positions from job.positions", async () => assert.deepEqual(await positions(), { [a.id]: "2", [b.id]: "1" }));
    server.send(JSON.stringify({ seq: 4, type: "job.positions", positions: [{ id: b.id, queue_position: 2, eta_s: 4 }, { id: a.id, queue_position: 3, eta_s: 8 }] }));
    server.send(JSON.stringify({ seq: 5, type: "pong" }));
    await eventually("the pong is seen", async () => assert.ok((await page.evaluate(() => window.__fg.frames.map((f) => f.seq))).includes(5)));
    assert.deepEqual(await positions(), { [a.id]: "2", [b.id]: "1" }, "positions never go back");
    const listsBefore = lists;
    assert.deepEqual(fromPage.filter((c) => c.type === "resync"), []);
    server.send(JSON.stringify({ seq: 7, type: "pong" }));
    await eventually("the gap made the page ask for resync and reload over REST", async () => {
      assert.equal(fromPage.filter((c) => c.type === "resync").length, 1);
      assert.ok(lists > listsBefore);
    });
  } finally {
    await page.close();
  }
}));

test("14. the page reconnects by itself when the gateway closes its socket (graceful restart)", { timeout: 60000 }, timed("14-server-close", async () => {
  const page = main.page;
  await waitConnected(page);
  const before = (await cards(page)).map((c) => ({ id: c.id, status: c.status }));
  const port = new URL(main.gateway.url).port;
  await stopProcess(main.gateway, "SIGTERM");
  await eventually("indicator says bağlantı yok", async () => assert.equal(await connectionText(page), "bağlantı yok"), 10000);
  main.gateway = await eventually("the gateway restarts on the same port", () =>
    startGateway("gateway-main", { simUrl: main.sim.url, dataDir: main.dataDir, bind: `127.0.0.1:${port}`, forgeTimeout: "60s", previews: true }),
  20000, 250);
  await waitConnected(page, 20000);
  await eventually("the same cards after the restart", async () => {
    assert.deepEqual((await cards(page)).map((c) => ({ id: c.id, status: c.status })), before);
  }, 10000);
}));

test("15. client.js resends writes a reset connection left unacknowledged: none lost, none applied twice", { timeout: 60000 }, timed("15-client-resend", async () => {
  // A TCP proxy in front of the gateway that can reset every connection through it, as a phone
  // losing its network does: no close handshake, frames in flight lost both ways.
  const target = new URL(main.gateway.url);
  const pairs = new Set();
  const proxy = net.createServer((inbound) => {
    const outbound = net.connect(Number(target.port), target.hostname);
    const pair = { inbound, outbound };
    pairs.add(pair);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    const forget = () => { pairs.delete(pair); inbound.destroy(); outbound.destroy(); };
    inbound.on("error", forget); outbound.on("error", forget);
    inbound.on("close", forget); outbound.on("close", forget);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${proxy.address().port}`;
  const page = await browser.newPage();
  page.on("pageerror", (err) => pageErrors.push(`resend page: ${err.message}`));
  try {
    await simConfig(main.sim, { latency: "10ms" });
    await page.goto(`${origin}/healthz`);
    const { id, version } = await page.evaluate(async () => {
      const { connect, devToken } = await import("/client.js");
      const { token } = await devToken("resender");
      const statuses = [];
      const limited = [];
      const onEvent = (frame) => { if (frame.type === "error" && frame.error?.code === "rate_limited") limited.push(frame.ref); };
      const client = connect({ base: location.origin, token, backoff: { min: 50, max: 200 }, onStatus: (s) => statuses.push(s), onEvent });
      window.__r = { client, statuses, token, limited };
      while (client.status !== "open") await new Promise((r) => setTimeout(r, 20));
      const created = await client.submit({ prompt: "edited while the network drops", width: 64, height: 64, steps: 1 });
      while (client.state.get(created.id)?.status !== "complete") await new Promise((r) => setTimeout(r, 20));
      return { id: created.id, version: client.state.get(created.id).version };
    });
    // More than a burst of WS_COMMANDS_PER_SECOND (20, so 40): some are refused as too early,
    // named by their ref, and client.js sends them again.
    const WRITES = 60;
    // Send the updates without waiting, and reset the connections at once.
    await page.evaluate(([id, count]) => {
      window.__r.done = Promise.all(Array.from({ length: count }, (_, n) => window.__r.client.update(id, { [`k${n}`]: n })));
    }, [id, WRITES]);
    for (const { inbound, outbound } of [...pairs]) { inbound.resetAndDestroy(); outbound.resetAndDestroy(); }
    await page.evaluate(() => Promise.race([
      window.__r.done,
      new Promise((_, reject) => setTimeout(() => reject(new Error("writes still unacknowledged after 30 s")), 30000)),
    ]));
    const statuses = await page.evaluate(() => window.__r.statuses);
    assert.ok(statuses.filter((s) => s === "open").length >= 2, `the client reconnected: ${statuses}`);
    const limited = await page.evaluate(() => window.__r.limited);
    assert.ok(limited.length > 0 && limited.every((ref) => typeof ref === "string"), `rate_limited refusals: ${limited}`);
    const token = await page.evaluate(() => window.__r.token);
    const message = await restCall("GET", `/api/v1/messages/${id}`, token);
    for (let n = 0; n < WRITES; n++) assert.equal(message.data[`k${n}`], n, `update ${n} lost: ${JSON.stringify(message.data)}`);
    assert.equal(message.version, version + WRITES, "each update applied once");
  } finally {
    await simConfig(main.sim, { latency: "1500ms" });
    await page.close();
    for (const { inbound, outbound } of pairs) { inbound.destroy(); outbound.destroy(); }
    proxy.close();
  }
}));

test("16. client.js sends a write answered unavailable again with the same ref; a refusal rejects it", { timeout: 30000 }, timed("16-client-unavailable", async () => {
  const page = await clientPage("deniz");
  const id = "0193e3a4-7b2c-7d10-9a51-3f6c2b8e4d01";
  try {
    await page.evaluate(() => window.__t.open("fake", { WebSocketImpl: window.__t.FakeSocket, keepaliveMs: 0, backoff: { min: 50, max: 100 } }));
    await eventually("socket open", async () => assert.equal(await page.evaluate(() => window.__t.FakeSocket.all[0]?.readyState), 1));
    await page.evaluate((id) => {
      const ws = window.__t.FakeSocket.all[0];
      ws.deliver({ seq: 1, type: "hello", user: "deniz", server_time: new Date().toISOString() });
      ws.deliver({ seq: 2, type: "snapshot", messages: [] });
      window.__u = { outcome: null };
      window.__t.clients.fake.client.update(id, { k: 1 })
        .then(() => { window.__u.outcome = "resolved"; }, (err) => { window.__u.outcome = `rejected ${err.code}`; });
    }, id);
    const updates = () => page.evaluate(() => window.__t.FakeSocket.all[0].sent.filter((c) => c.type === "update_message"));
    await eventually("the update was sent", async () => assert.equal((await updates()).length, 1));
    const [first] = await updates();
    // The server could not tell whether it was applied (it was stopping): not a refusal.
    await page.evaluate(([id, ref]) => window.__t.FakeSocket.all[0].deliver({ seq: 3, type: "error", id, ref, error: { code: "unavailable", message: "Servis şu anda kullanılamıyor." } }), [id, first.ref]);
    await eventually("sent again with the same ref", async () => {
      const sent = await updates();
      assert.equal(sent.length, 2);
      assert.deepEqual(sent[1], first);
    }, 5000, 10);
    assert.equal(await page.evaluate(() => window.__u.outcome), null, "still waiting for its answer");
    await page.evaluate(([id, ref]) => window.__t.FakeSocket.all[0].deliver({ seq: 4, type: "error", id, ref, error: { code: "not_found", message: "Mesaj bulunamadı." } }), [id, first.ref]);
    await eventually("a refusal rejects it", async () => assert.equal(await page.evaluate(() => window.__u.outcome), "rejected not_found"));
  } finally {
    await page.close();
  }
}));

test("17. the page offers the backend's models and samplers, remembers the choice, and shows the model on the card", { timeout: 60000 }, timed("17-models", async () => {
  const page = main.page;
  await waitConnected(page);
  await simConfig(main.sim, { models: ["sim-model", "watercolour"] });
  const options = (testid) => page.locator(`[data-testid="${testid}"] option`).allTextContents();
  // The gateway asks the backend again within MODELS_REFRESH; the page reads the list when it
  // signs in, so reload until it shows both.
  await eventually("both models offered, the loaded one marked", async () => {
    await page.reload();
    await waitConnected(page);
    const models = await options("model");
    assert.ok(models.includes("sim-model (yüklü)") && models.includes("watercolour"), models.join(", "));
  }, 20000, 500);
  assert.ok((await options("sampler")).includes("Euler a"));
  await page.evaluate(() => { document.querySelector("details.settings").open = true; });
  // Playwright finds a select in a just-opened <details> not visible; the select is on
  // screen (tests/browser/screenshots/17-models.png), so its checks are skipped.
  await page.locator('[data-testid="model"]').selectOption("watercolour", { force: true });
  const prompt = "models: a harbour at dawn";
  await submit(page, prompt);
  const card = await cardOf(page, prompt);
  await waitCard(page, card.id, "complete", (c) => assert.equal(c.status, "complete"), 30000);
  const meta = await page.locator(`[data-testid="message-card"][data-id="${card.id}"]`).textContent();
  assert.ok(meta.includes("watercolour"), meta);
  assert.equal(await page.evaluate((id) => window.__fg.client.state.get(id).model, card.id), "watercolour");
  await page.reload();
  await waitConnected(page);
  await eventually("the last choice is remembered", async () => {
    assert.equal(await page.locator('[data-testid="model"]').inputValue(), "watercolour");
  });
  await shot(page, "17-models.png");
  await page.locator('[data-testid="model"]').selectOption("", { force: true });
}));

test("no uncaught page errors; the pages saw no anomalies", async () => {
  assert.deepEqual(pageErrors, []);
  for (const page of [main.page, faults.page].filter(Boolean)) {
    assert.deepEqual(await page.evaluate(() => window.__fg.anomalies), []);
  }
});

test("every WebSocket frame followed the contract", () => {
  assert.ok(sockets.length >= 4, `sockets seen: ${sockets.length}`);
  checkFrames(sockets);
});

// forge-gateway browser client: one dependency-free ES module, served at /client.js.
// The protocol is docs/api.md ("WebSocket GET /ws") and /asyncapi.json; in short:
//
//   import { connect } from "/client.js";
//   const gateway = connect({ base: location.origin, token, onState, onEvent, onStatus });
//   await gateway.submit({ prompt: "a cat" });
//
// `gateway.state` is a Map of message views by id, kept current over the WebSocket: `hello`
// and `snapshot` on connect, every event applied in version order (an older version is never
// applied), live positions (`job.position`, `job.positions`) that never go back unless a newer
// read says so. A `seq` gap or a `resync` frame means frames were lost: the client reloads
// over REST and asks for a new snapshot. A socket that closes is reopened with capped
// exponential backoff and jitter (not after `close()`). The REST helpers send
// `Authorization: Bearer` and throw `GatewayError` on failure.

const PENDING = new Set(["queued", "processing"]);
const LIST_LIMIT = 50;
/** The close code of a socket whose token expired (docs/api.md). */
const TOKEN_EXPIRED = 4001;

/**
 * @typedef {"queued"|"processing"|"complete"|"error"|"cancelled"} Status
 * @typedef {{code: string, message: string}} JobError
 * @typedef {{negative_prompt: string, width: number, height: number, steps: number,
 *   cfg_scale: number, sampler_name: string, seed: number}} Params
 * @typedef {{id: string, conversation_id: string|null, status: Status, progress: number,
 *   queue_position: number|null, position_unavailable: boolean, eta_s: number|null,
 *   image_url: string|null, placeholder: boolean, notice: JobError|null, error: JobError|null,
 *   preview_url: string|null, seed: number|null, model: string|null, prompt: string, params: Params,
 *   data: Record<string, unknown>, retry_of: string|null, version: number, created_at: string,
 *   updated_at: string, started_at: string|null, finished_at: string|null}} MessageView
 *   (Events change the fields they carry; the time stamps are those of the last read.)
 * @typedef {{type: string, seq: number, [field: string]: any}} Frame
 * @typedef {"connecting"|"open"|"closed"} ConnectionStatus
 * @typedef {{
 *   base?: string,
 *   token: string,
 *   renewToken?: () => Promise<string|null>,
 *   onState?: (state: Map<string, MessageView>, changed: string[]) => void,
 *   onEvent?: (frame: Frame) => void,
 *   onStatus?: (status: ConnectionStatus) => void,
 *   onError?: (error: GatewayError) => void,
 *   WebSocketImpl?: typeof WebSocket,
 *   fetchImpl?: typeof fetch,
 *   backoff?: {min?: number, max?: number},
 *   keepaliveMs?: number,
 * }} ConnectOptions
 *   `renewToken` is asked for a new token once when a call answers 401; `onError` hears
 *   failures of background reloads; `backoff` is in ms (500 doubling to 5000 by default);
 *   `keepaliveMs` is the period of the client's own `ping` (0: none); a connection that stays
 *   silent for two periods is dropped and reopened.
 */

/** An error answer (or no answer: status 0, code "network") of the gateway. */
export class GatewayError extends Error {
  /**
   * @param {number} status HTTP status, 0 when the gateway could not be reached
   * @param {string} code e.g. "validation", "conflict", "unauthorized"
   * @param {string} message the gateway's (Turkish) message
   * @param {string|null} [field] the field to blame, if any
   */
  constructor(status, code, message, field = null) {
    super(message);
    this.name = "GatewayError";
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

const defaultBase = () => (globalThis.location ? globalThis.location.origin : "");

/** One REST call; the JSON answer, or a thrown GatewayError. */
async function call(fetchImpl, base, method, path, token, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (token) init.headers.Authorization = "Bearer " + token;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetchImpl(base + path, init);
  } catch {
    throw new GatewayError(0, "network", "Sunucuya ulaşılamadı.");
  }
  const answer = await response.json().catch(() => null);
  if (response.ok) return answer;
  const error = (answer && answer.error) || {};
  throw new GatewayError(response.status, error.code || "http_" + response.status,
    error.message || "Sunucu hatası (HTTP " + response.status + ").", error.field ?? null);
}

/**
 * A dev-mode token (`POST /api/v1/dev/token`; only where the gateway runs in dev mode).
 * @returns {Promise<{token: string, user: string, expires_at: string}>}
 */
export function devToken(user, { base = defaultBase(), fetchImpl = globalThis.fetch.bind(globalThis) } = {}) {
  return call(fetchImpl, base, "POST", "/api/v1/dev/token", null, { user });
}

/** @param {ConnectOptions} options */
export function connect(options) {
  const base = options.base ?? defaultBase();
  const noop = () => {};
  const { onState = noop, onEvent = noop, onStatus = noop, onError = noop, renewToken } = options;
  const WebSocketImpl = options.WebSocketImpl || globalThis.WebSocket;
  const fetchImpl = options.fetchImpl || globalThis.fetch.bind(globalThis);
  const minDelay = options.backoff?.min ?? 500;
  const maxDelay = options.backoff?.max ?? 5000;
  const keepaliveMs = options.keepaliveMs ?? 25000;
  let token = options.token;

  /** @type {Map<string, MessageView>} */
  const state = new Map();
  const anomalies = [];
  const positionAt = new Map(); // id → clock of the frame or read that last set its position
  const orphans = new Map(); // id → events that came before its view
  const fetching = new Set();
  let clock = 0; // counts frames received and reads started: orders positions against reads
  let socket = null, generation = 0, seq = 0, attempt = 0, closed = false;
  let reconnectTimer = null, keepaliveTimer = null, lastFrameAt = 0, submits = 0;
  let status = null, user = null, reloading = null, reloadAgain = false;
  // Writes sent over the socket and not acknowledged yet, by ref, in the order sent: each is
  // sent again on every new connection until a frame with its ref answers it (the server
  // applies a ref once, so a write that did land before a connection broke is not applied
  // twice).
  const writes = new Map();
  let writeCount = 0;

  const setStatus = (next) => { if (next !== status) { status = next; onStatus(next); } };
  const emit = (changed) => { if (changed.size) onState(state, [...changed]); };

  async function request(method, path, body, headers) {
    try {
      return await call(fetchImpl, base, method, path, token, body, headers);
    } catch (err) {
      if (err.status !== 401 || !renewToken) throw err;
      const fresh = await renewToken().catch(() => null);
      if (!fresh) throw err;
      token = fresh;
      return call(fetchImpl, base, method, path, token, body, headers);
    }
  }

  // ---------------------------------------------------------------- applying views and frames

  /** A full view from a read (REST or snapshot) that started at `readAt`. */
  function applyRead(view, readAt, changed) {
    const current = state.get(view.id);
    if (current && view.version < current.version) return;
    const next = { ...view };
    if (next.status === "queued") {
      // A read newer than the last position shown says where it is now; an older one may
      // only move it forward.
      if (readAt >= (positionAt.get(view.id) ?? -1)) {
        positionAt.set(view.id, readAt);
      } else if (current && current.status === "queued" && current.queue_position != null &&
          (next.queue_position == null || current.queue_position < next.queue_position)) {
        next.queue_position = current.queue_position;
        next.eta_s = current.eta_s;
        next.position_unavailable = false;
      }
    }
    state.set(view.id, next);
    changed.add(view.id);
    const waiting = orphans.get(view.id);
    if (waiting) {
      orphans.delete(view.id);
      for (const frame of waiting) applyEvent(frame, changed);
    }
  }

  /** A live position (no version): only for a queued message, and never back. */
  function applyPosition(id, position, eta, changed) {
    const current = state.get(id);
    if (!current) return fetchSoon(id);
    if (current.status !== "queued" || !Number.isInteger(position)) return;
    if (current.queue_position != null && position > current.queue_position) return;
    positionAt.set(id, clock);
    const eta_s = eta ?? null;
    if (current.queue_position === position && current.eta_s === eta_s && !current.position_unavailable) return;
    state.set(id, { ...current, queue_position: position, eta_s, position_unavailable: false });
    changed.add(id);
  }

  /** An event about one message (job.*, message.updated), applied if its version is newer. */
  function applyEvent(frame, changed) {
    const id = frame.id;
    const current = state.get(id);
    if (!current) {
      const waiting = orphans.get(id) || [];
      if (waiting.length < 100) waiting.push(frame);
      orphans.set(id, waiting);
      return fetchSoon(id);
    }
    if (typeof frame.version !== "number") {
      anomalies.push({ reason: "an event without a version", frame });
      return;
    }
    if (frame.version <= current.version) {
      if (frame.version === current.version && frame.status && frame.status !== current.status) {
        anomalies.push({ reason: "the same version with another status", have: current.status, frame });
      }
      return;
    }
    const next = { ...current, version: frame.version };
    if (frame.status) next.status = frame.status;
    switch (frame.type) {
      case "job.queued":
        next.progress = 0;
        if (Number.isInteger(frame.queue_position) &&
            (current.queue_position == null || frame.queue_position <= current.queue_position)) {
          next.queue_position = frame.queue_position;
          next.position_unavailable = false;
          positionAt.set(id, clock);
        }
        break;
      case "job.processing":
        next.progress = frame.progress ?? 0;
        next.eta_s = null;
        break;
      case "job.progress":
        next.progress = frame.progress ?? next.progress;
        next.eta_s = frame.eta_s ?? null;
        break;
      case "job.preview":
        next.preview_url = frame.preview_url;
        break;
      case "job.complete":
        Object.assign(next, {
          progress: 100, image_url: frame.image_url, placeholder: !!frame.placeholder,
          notice: frame.notice ?? null, seed: frame.seed ?? null, error: null,
        });
        if (frame.model != null) next.model = frame.model;
        break;
      case "job.error":
      case "job.cancelled":
        next.error = frame.error ?? current.error ?? null;
        break;
      case "message.updated":
        next.data = frame.data;
        break;
      default:
        return; // a kind this client does not know yet
    }
    if (next.status !== "queued") { next.queue_position = null; next.position_unavailable = false; }
    if (next.status !== "processing") next.preview_url = null;
    if (!PENDING.has(next.status)) next.eta_s = null;
    state.set(id, next);
    changed.add(id);
  }

  /** Sends a write command with a fresh ref; resolves when a frame with that ref answers it. */
  function write(command, answer) {
    return new Promise((resolve, reject) => {
      const ref = `w${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}${++writeCount}`;
      const sent = { ...command, ref };
      writes.set(ref, { command: sent, answer, resolve, reject, limited: 0 });
      send(sent);
    });
  }

  /** A frame answering one of our writes (after it was applied to `state`). */
  function settleWrite(frame) {
    const pending = typeof frame.ref === "string" ? writes.get(frame.ref) : null;
    if (!pending) return;
    if (frame.type === "error" && (frame.error?.code === "rate_limited" || frame.error?.code === "unavailable")) {
      // Not refused: too early, or the server could not say whether it was applied (it was
      // stopping, or its database was away). The same write goes again (its ref makes it
      // apply once) after a backoff, and again on the next connection if this one breaks.
      const wait = Math.min(maxDelay, minDelay * 2 ** pending.limited++);
      setTimeout(() => { if (writes.get(frame.ref) === pending) send(pending.command); }, wait / 2 + Math.random() * (wait / 2));
      return;
    }
    writes.delete(frame.ref);
    if (frame.type === "error") {
      const error = frame.error || {};
      pending.reject(new GatewayError(0, error.code || "error", error.message || "", error.field ?? null));
    } else {
      pending.resolve(pending.answer(frame));
    }
  }

  function onFrame(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { anomalies.push({ reason: "a frame that is not JSON", text }); return; }
    clock++;
    lastFrameAt = Date.now();
    const gap = typeof frame.seq === "number" && frame.seq !== seq + 1;
    if (typeof frame.seq === "number") seq = frame.seq;
    const changed = new Set();
    switch (frame.type) {
      case "hello":
        user = frame.user;
        break;
      case "snapshot":
        for (const view of frame.messages || []) applyRead(view, clock, changed);
        attempt = 0;
        setStatus("open");
        // Writes not acknowledged on an earlier connection go again (a ref is applied once).
        for (const pending of writes.values()) send(pending.command);
        // The snapshot holds the pending messages; what finished meanwhile comes over REST.
        reload().catch(onError);
        break;
      case "job.position":
        applyPosition(frame.id, frame.queue_position, frame.eta_s, changed);
        break;
      case "job.positions":
        for (const entry of frame.positions || []) applyPosition(entry.id, entry.queue_position, entry.eta_s, changed);
        break;
      case "resync":
        recover();
        break;
      case "pong":
      case "error":
        break;
      default:
        if (typeof frame.id === "string") applyEvent(frame, changed);
    }
    emit(changed);
    settleWrite(frame);
    onEvent(frame);
    if (gap && frame.type !== "resync") recover();
  }

  /** Frames were lost: reload over REST and ask for a new snapshot. */
  function recover() {
    send({ type: "resync" });
    reload().catch(onError);
  }

  function send(command) {
    if (socket && socket.readyState === 1) socket.send(JSON.stringify(command));
  }

  /** Reads one message over REST and applies it (events that came before it included). */
  async function refresh(id) {
    const readAt = ++clock;
    const view = await request("GET", "/api/v1/messages/" + encodeURIComponent(id));
    const changed = new Set();
    applyRead(view, readAt, changed);
    emit(changed);
    return view;
  }

  /** An event about a message we do not know (another tab's, or our POST has not answered). */
  function fetchSoon(id) {
    if (fetching.has(id)) return;
    fetching.add(id);
    setTimeout(async () => {
      try { if (!state.has(id) && !closed) await refresh(id); } catch { orphans.delete(id); }
      finally { fetching.delete(id); }
    }, submits > 0 ? 300 : 0);
  }

  async function reloadOnce() {
    const readAt = ++clock;
    const body = await request("GET", "/api/v1/messages?limit=" + LIST_LIMIT);
    const changed = new Set();
    const listed = new Set();
    for (const view of body.messages || []) { listed.add(view.id); applyRead(view, readAt, changed); }
    emit(changed);
    // Pending messages older than the list: read them one by one (they may have finished).
    const older = [...state.values()].filter((view) => PENDING.has(view.status) && !listed.has(view.id));
    await Promise.all(older.map((view) => refresh(view.id).catch(() => {})));
  }

  /** Reloads the newest messages over REST; calls made while one runs share one more pass. */
  function reload() {
    if (reloading) { reloadAgain = true; return reloading; }
    reloading = (async () => {
      try {
        do { reloadAgain = false; await reloadOnce(); } while (reloadAgain && !closed);
      } finally {
        reloading = null;
      }
    })();
    return reloading;
  }

  // ---------------------------------------------------------------- the socket

  function open() {
    if (closed) return;
    const mine = ++generation;
    seq = 0;
    setStatus("connecting");
    let ws;
    try {
      ws = new WebSocketImpl(base.replace(/^http/, "ws") + "/ws?token=" + encodeURIComponent(token));
    } catch {
      setStatus("closed");
      return scheduleReconnect(mine, false);
    }
    socket = ws;
    let opened = false;
    ws.addEventListener("open", () => {
      if (mine !== generation) return;
      opened = true;
      lastFrameAt = Date.now();
    });
    ws.addEventListener("message", (event) => { if (mine === generation) onFrame(event.data); });
    ws.addEventListener("close", (event) => {
      if (mine !== generation) return;
      socket = null;
      setStatus("closed");
      // 4001: the token the socket was opened with expired; ask for a fresh one first.
      scheduleReconnect(mine, opened, event.code === TOKEN_EXPIRED);
    });
  }

  function scheduleReconnect(mine, opened, expired = false) {
    if (closed || mine !== generation) return;
    const ceiling = Math.min(maxDelay, minDelay * 2 ** attempt);
    attempt++;
    const wait = expired ? 0 : ceiling / 2 + Math.random() * (ceiling / 2);
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(async () => {
      if (expired && renewToken) {
        const fresh = await renewToken().catch(() => null);
        if (fresh) token = fresh;
      } else if (!opened && renewToken) {
        // A socket that never opened may have had its token refused: a REST call renews it.
        await request("GET", "/api/v1/messages?limit=1").catch(() => {});
      }
      if (mine === generation) open();
    }, wait);
  }

  if (keepaliveMs > 0) {
    keepaliveTimer = setInterval(() => {
      if (!socket || socket.readyState !== 1) return;
      if (Date.now() - lastFrameAt > 2 * keepaliveMs) {
        // Silent for too long (a half-open connection): drop it and start again.
        const dead = socket;
        const mine = ++generation;
        socket = null;
        try { dead.close(4000, "silent"); } catch { /* gone */ }
        setStatus("closed");
        scheduleReconnect(mine, true);
      } else {
        send({ type: "ping" });
      }
    }, keepaliveMs);
  }

  setStatus("connecting");
  // The first read checks (and renews) the token before the socket uses it.
  reload().catch(onError).finally(open);

  // ---------------------------------------------------------------- the API

  async function readAndApply(method, path, body, headers) {
    const readAt = ++clock;
    const view = await request(method, path, body, headers);
    const changed = new Set();
    applyRead(view, readAt, changed);
    emit(changed);
    return view;
  }

  const messagePath = (id, rest = "") => "/api/v1/messages/" + encodeURIComponent(id) + rest;

  return {
    state,
    anomalies,
    /** @returns {ConnectionStatus} */
    get status() { return status; },
    /** The user of the token, once `hello` said. */
    get user() { return user; },
    /** The token in use (renewed ones included). */
    get token() { return token; },

    /** Closes the socket for good: no reconnect. */
    close() {
      closed = true;
      generation++;
      clearTimeout(reconnectTimer);
      clearInterval(keepaliveTimer);
      if (socket) { try { socket.close(1000); } catch { /* gone */ } }
      socket = null;
      setStatus("closed");
    },

    /**
     * `POST /api/v1/messages`: the new message (queued).
     * @param {{prompt: string, negative_prompt?: string, width?: number, height?: number,
     *   steps?: number, cfg_scale?: number, sampler_name?: string, seed?: number,
     *   conversation_id?: string, model?: string, data?: object}} body
     * @param {{idempotencyKey?: string}} [options]
     * @returns {Promise<MessageView>}
     */
    async submit(body, { idempotencyKey } = {}) {
      submits++;
      try {
        return await readAndApply("POST", "/api/v1/messages", body,
          idempotencyKey ? { "Idempotency-Key": idempotencyKey } : undefined);
      } finally {
        submits--;
      }
    },

    /**
     * Cancels a pending message. A 409 (it had finished) refreshes the message, then throws.
     * @returns {Promise<MessageView>}
     */
    async cancel(id) {
      try {
        return await readAndApply("POST", messagePath(id, "/cancel"));
      } catch (err) {
        if (err.status === 409) await refresh(id).catch(() => {});
        throw err;
      }
    },

    /**
     * A new message with the same prompt and parameters (and Forge's seed with `reuseSeed`).
     * @param {string} id
     * @param {{reuseSeed?: boolean}} [options]
     * @returns {Promise<MessageView>}
     */
    retry(id, { reuseSeed = false } = {}) {
      return readAndApply("POST", messagePath(id, "/retry"), reuseSeed ? { reuse_seed: true } : undefined);
    },

    /**
     * Merges `data` into the message's client data (RFC 7396), over the socket: resolves with
     * the message once the server acknowledges the write (`message.updated` with its ref),
     * rejects with a `GatewayError` (status 0) if it refuses it. A write not acknowledged when
     * the connection breaks is sent again on the next one, and applied once.
     * @returns {Promise<MessageView>}
     */
    update(id, data) {
      return write({ type: "update_message", id, data }, () => state.get(id));
    },

    /**
     * `GET /api/v1/messages` with `query` (status, conversation_id, limit, before); the views
     * are applied to `state` too.
     * @param {{status?: string, conversation_id?: string, limit?: number, before?: string}} [query]
     * @returns {Promise<MessageView[]>}
     */
    async list(query = {}) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) if (value != null) params.set(key, String(value));
      const readAt = ++clock;
      const body = await request("GET", "/api/v1/messages" + (params.toString() ? "?" + params : ""));
      const changed = new Set();
      for (const view of body.messages || []) applyRead(view, readAt, changed);
      emit(changed);
      return body.messages || [];
    },

    /**
     * `GET /api/v1/models`: the checkpoints (`name`, `title`, on how many backends, loaded on
     * how many) and samplers (`name`, `aliases`) the backends offer.
     * @returns {Promise<{models: {name: string, title: string, backends: number, loaded: number}[],
     *   samplers: {name: string, aliases: string[]}[]}>}
     */
    async models() {
      return request("GET", "/api/v1/models");
    },

    /** Reloads the newest messages (and every pending one) over REST. */
    reload,
  };
}

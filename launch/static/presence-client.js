/* The one presence client of the browser (docs/presence-protocol.md, "The browser client"), shared by the
 * lobby, the provider view and the room.
 *
 * It opens /ws, authenticates first, subscribes, and after any reconnect resumes after the last event id it
 * saw, so the page gets every event exactly once: duplicates (an event the page already has) are dropped
 * here by id. Reconnects back off exponentially with jitter, up to a bound on the delay and, if the page
 * asks, on the number of attempts. Every frame is parsed under guard: a frame that is not JSON, or not the
 * shape its type says, is counted and ignored, never thrown into the page. Requests carry ids; their
 * `result`, `ice` or `error` answer settles the promise `request()` returned, and every error frame is also
 * handed to the page's `onError`, so the page can say what went wrong.
 */

/** An error frame's code, or `connection_lost` / `timeout` / `not_connected` for a request never answered. */
export class PresenceError extends Error {
  constructor(code, frame) {
    super(code);
    this.name = "PresenceError";
    this.code = code;
    this.frame = frame || null;
  }
}

// Close codes the server uses (docs/presence-protocol.md).
const AUTH_FAILED = 4401;
const RESTART = 1012;

const DEFAULTS = {
  url: "/ws",
  subscribe: true,
  subscribeFrame: null, // () -> the frame to subscribe with, instead of {type: "subscribe", after}
  dedupe: true, // drop events at or below the last id seen; off for a clinic queue (many visits, own order)
  baseDelayMs: 500,
  maxDelayMs: 15000,
  maxAttempts: Infinity, // reconnects in a row (no auth_ok between them) before giving up
  authTimeoutMs: 10000, // the server answers auth at once; a socket silent this long is started afresh
  requestTimeoutMs: 15000,
};

const ANSWERS = new Set(["result", "error", "ice", "snapshot", "auth_ok"]);

function isInt(value) {
  return typeof value === "number" && Number.isSafeInteger(value);
}

/** Bounded exponential backoff with "equal jitter": half the delay fixed, half random. */
export function backoffDelay(attempt, baseMs, maxMs) {
  const ceiling = Math.min(maxMs, baseMs * Math.pow(2, Math.max(0, attempt - 1)));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** Parse one text frame; null for anything that is not a JSON object with a string `type`. */
export function parseFrame(data) {
  if (typeof data !== "string") return null;
  let frame;
  try {
    frame = JSON.parse(data);
  } catch (err) {
    return null;
  }
  if (!frame || typeof frame !== "object" || Array.isArray(frame) || typeof frame.type !== "string") return null;
  return frame;
}

function validEvent(frame) {
  return isInt(frame.id) && frame.id > 0 && typeof frame.kind === "string" &&
    (frame.participant === null || frame.participant === undefined || typeof frame.participant === "string");
}

/**
 * Options (all optional but `auth`):
 *   auth()            -> the auth frame's fields ({where, provider?}); called at each connect, so a renewed
 *                        provider handle is used
 *   onAuthenticated(info)  after auth_ok, before subscribing: send hello and the like here
 *   onSnapshot(events, frame)  the first subscription's snapshot (events already checked)
 *   onEvent(event)    each new event, in order, exactly once
 *   onSynced({resumed, lastId})  the snapshot or the resumed backlog has been delivered
 *   onFrame(frame)    any other frame (display_name, signal, ice answers too)
 *   onError(code, frame, request)  every error frame (request: the frame that caused it, if known)
 *   onStatus(state, detail)  "connecting" | "open" | "reconnecting" | "failed" | "ended" | "closed"
 *   onEnded(code)     authentication refused (4401): the session is over; the client stops
 *   subscribeFrame()  a clinic queue subscribes with its own frame ({type: "subscribe_queue", scope}); its
 *                     snapshot answers it as a visit's does, and after a reconnect it subscribes afresh
 *   dedupe            false for a clinic queue: its visits' events interleave out of id order, so the page
 *                     orders them per visit, and the client neither drops nor resumes by id
 */
export class PresenceClient {
  constructor(options) {
    this.options = Object.assign({}, DEFAULTS, options);
    this.lastEventId = null;
    this.state = "closed";
    this.stats = { connects: 0, malformed: 0, duplicates: 0, events: 0 };
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // request id -> {frame, resolve, reject, timer}
    this._attempt = 0;
    this._retryTimer = null;
    this._authTimer = null;
    this._authId = null;
    this._subscribeId = null;
    this._wanted = false; // start() was called and stop() was not
    this._ended = false;
  }

  /** Connect (or reconnect at once, forgetting the backoff); resumes after lastEventId if one was seen. */
  start() {
    if (this._ended) return;
    this._wanted = true;
    this._attempt = 0;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (!this._ws) this._connect();
  }

  /** Close for good (until start() again); the events seen are remembered for the next start(). */
  stop(code, reason) {
    this._wanted = false;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._drop("connection_lost");
    if (ws) {
      try { ws.close(code || 1000, reason || "closed"); } catch (err) { /* already closing */ }
    }
    this._setState(this._ended ? "ended" : "closed");
  }

  /** Whether the socket is authenticated and frames can be sent. */
  get ready() {
    return this.state === "open";
  }

  /** Send a frame with a fresh id and no interest in its answer; false when not connected. */
  send(frame) {
    return this._send(frame) !== null;
  }

  /** Send a frame; resolves with its result (or ice) frame, rejects with a PresenceError. */
  request(frame) {
    return new Promise((resolve, reject) => {
      const id = this._send(frame);
      if (id === null) {
        reject(new PresenceError("not_connected"));
        return;
      }
      const timer = setTimeout(() => {
        if (this._pending.delete(id)) reject(new PresenceError("timeout"));
      }, this.options.requestTimeoutMs);
      this._pending.set(id, { frame, resolve, reject, timer });
    });
  }

  // ---- internals ---------------------------------------------------------------------------------

  _call(name, ...args) {
    const fn = this.options[name];
    if (typeof fn !== "function") return undefined;
    try {
      return fn(...args);
    } catch (err) {
      // A fault in the page's handler must not leave the client half-updated.
      console.error("presence: the page's " + name + " failed", err);
      return undefined;
    }
  }

  _setState(state, detail) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    this._call("onStatus", state, detail || {});
  }

  _send(frame, socket) {
    const ws = socket || this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return null;
    if (!socket && this.state !== "open") return null;
    const id = this._nextId++;
    const out = Object.assign({}, frame, { id: id });
    try {
      ws.send(JSON.stringify(out));
    } catch (err) {
      return null;
    }
    return id;
  }

  _connect() {
    this._retryTimer = null;
    if (!this._wanted || this._ended) return;
    this._setState(this._attempt ? "reconnecting" : "connecting", { attempt: this._attempt });
    const url = new URL(this.options.url, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(url.href);
    } catch (err) {
      this._retry(null);
      return;
    }
    this._ws = ws;
    this.stats.connects += 1;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      const auth = Object.assign({}, this._call("auth") || {}, { type: "auth" });
      this._authId = this._send(auth, ws);
      this._authTimer = setTimeout(() => {
        if (ws === this._ws && this.state !== "open") {
          this._drop("connection_lost");
          try { ws.close(4000, "no auth answer"); } catch (err) { /* closing anyway */ }
          this._retry(null);
        }
      }, this.options.authTimeoutMs);
    };
    ws.onmessage = (message) => {
      if (ws !== this._ws) return; // a socket we already gave up on
      const frame = parseFrame(message.data);
      if (frame === null) {
        this.stats.malformed += 1;
        return;
      }
      this._onFrame(frame);
    };
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      this._drop("connection_lost");
      if (event.code === AUTH_FAILED) {
        this._end(event.code);
      } else {
        this._retry(event.code);
      }
    };
  }

  /** Forget the current socket: pending requests fail, timers stop. Returns the socket, if any. */
  _drop(code) {
    const ws = this._ws;
    this._ws = null;
    this._authId = null;
    this._subscribeId = null;
    clearTimeout(this._authTimer);
    this._authTimer = null;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = null;
    const pending = Array.from(this._pending.values());
    this._pending.clear();
    pending.forEach((p) => {
      clearTimeout(p.timer);
      p.reject(new PresenceError(code));
    });
    return ws;
  }

  _retry(closeCode) {
    if (!this._wanted || this._ended || this._retryTimer) return;
    this._attempt += 1;
    if (this._attempt > this.options.maxAttempts) {
      this._wanted = false;
      this._setState("failed", { attempt: this._attempt - 1 });
      return;
    }
    // A server restart (1012) asks every browser back at once: a short, spread delay, not a penalty.
    const delay = closeCode === RESTART && this._attempt === 1
      ? Math.random() * this.options.baseDelayMs
      : backoffDelay(this._attempt, this.options.baseDelayMs, this.options.maxDelayMs);
    this._setState("reconnecting", { attempt: this._attempt, delayMs: delay, code: closeCode });
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  _end(code) {
    this._ended = true;
    this._wanted = false;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._drop("connection_lost");
    if (ws) {
      try { ws.close(1000, "ended"); } catch (err) { /* already closed */ }
    }
    this._setState("ended", { code: code });
    this._call("onEnded", code);
  }

  _settle(frame) {
    if (!isInt(frame.id)) return null;
    const pending = this._pending.get(frame.id);
    if (!pending) return null;
    this._pending.delete(frame.id);
    clearTimeout(pending.timer);
    if (frame.type === "error") pending.reject(new PresenceError(String(frame.code || "error"), frame));
    else pending.resolve(frame);
    return pending.frame;
  }

  _deliver(event) {
    if (!this.options.dedupe) {
      this.stats.events += 1;
      this._call("onEvent", event);
      return;
    }
    if (this.lastEventId !== null && event.id <= this.lastEventId) {
      this.stats.duplicates += 1;
      return;
    }
    this.lastEventId = event.id;
    this.stats.events += 1;
    this._call("onEvent", event);
  }

  _noteLastId(id) {
    if (isInt(id) && (this.lastEventId === null || id > this.lastEventId)) this.lastEventId = id;
  }

  _onFrame(frame) {
    const type = frame.type;
    // Event frames carry the event's id, not a request's: only answers are matched to requests.
    const request = ANSWERS.has(type) ? this._settle(frame) : null;
    switch (type) {
      case "auth_ok":
        if (this.state === "open") return;
        clearTimeout(this._authTimer);
        this._authTimer = null;
        this._attempt = 0;
        this._setState("open", { participant: frame.participant, role: frame.role, visit: frame.visit });
        this._call("onAuthenticated", frame);
        if (this.options.subscribe && this.state === "open") {
          const custom = this._call("subscribeFrame");
          this._subscribeId = this._send(custom || { type: "subscribe", after: this.lastEventId });
        }
        return;
      case "snapshot": {
        if (!isInt(frame.id) || frame.id !== this._subscribeId) return;
        const dedupe = this.options.dedupe;
        const events = (Array.isArray(frame.events) ? frame.events : []).filter((e) =>
          e && typeof e === "object" && validEvent(e) &&
          (!dedupe || this.lastEventId === null || e.id > this.lastEventId));
        events.sort((a, b) => a.id - b.id);
        if (events.length && dedupe) this.lastEventId = events[events.length - 1].id;
        this.stats.events += events.length;
        if (dedupe) this._noteLastId(frame.last_id);
        this._call("onSnapshot", events, frame);
        this._call("onSynced", { resumed: false, lastId: this.lastEventId });
        return;
      }
      case "event":
        if (validEvent(frame)) this._deliver(frame);
        else this.stats.malformed += 1;
        return;
      case "result":
        if (isInt(frame.id) && frame.id === this._subscribeId) {
          // The backlog after `after` has been sent: from here on everything is live.
          this._noteLastId(frame.last_id);
          this._call("onSynced", { resumed: true, lastId: this.lastEventId });
        }
        return;
      case "error": {
        if (isInt(frame.id) && frame.id === this._authId && frame.code === "auth_failed") {
          this._end(AUTH_FAILED);
          return;
        }
        const code = typeof frame.code === "string" ? frame.code : "error";
        this._call("onError", code, frame, request);
        return;
      }
      default:
        this._call("onFrame", frame);
    }
  }
}

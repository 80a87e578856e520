// Nexus notifications: a dependency-free client for the query dashboard's WebSocket endpoint.
//
//   const client = new NexusNotifications("http://localhost:8081", { token: "..." });
//   client.subscribe("orders", { projection: "orders", collection: "orders" }, {
//     notification(n) { ... n.id, n.aggregate_version, n.event_id ... },
//     reset(r) { ... refetch the documents, then go on ... },
//   });
//
// It reconnects with exponential backoff and full jitter (a random delay between 0 and
// min(maxDelay, minDelay * 2^attempt), the first attempt included, so clients dropped together
// do not come back together), resumes every subscription from the last `resume` mark it got
// (`since`), and calls `reset` when the server says that position cannot be resumed. A
// throttled client gets notifications out of position order and its mark can trail documents
// it already has, which a resume replays: the client remembers the documents delivered above
// the mark (forgotten as the mark passes them) and never hands the same change over twice. A link
// silent for the server's ping interval plus 10 s is taken as dead. The credential travels in
// the `Sec-WebSocket-Protocol` header (`nexus.bearer.<base64url>`), never in the URL; pass
// `token` as a function to get a fresh one at each connection (a connection closes with 4401
// when its token expires). A filter subscription gets `op: "left"` when a document stops
// matching its filter.
(function (global) {
  "use strict";

  var PROTOCOL = "nexus.v1";

  function base64url(text) {
    var bytes = new TextEncoder().encode(text);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function NexusNotifications(baseUrl, options) {
    options = options || {};
    var url = new URL("/notifications/ws", baseUrl || global.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    this.url = url.toString();
    this.token = options.token || null;
    this.minDelay = options.minDelay || 500;
    this.maxDelay = options.maxDelay || 20000;
    this.onStatus = options.onStatus || function () {};
    this.subs = {};
    this.attempt = 0;
    this.socket = null;
    this.closed = false;
    this.timer = null;
    this.watchdog = null;
    this.pingInterval = 25000;
    this.connect();
  }

  NexusNotifications.prototype.status = function (status, detail) {
    this.onStatus(status, detail);
  };

  NexusNotifications.prototype.connect = function () {
    var self = this;
    if (self.closed) return;
    var protocols = [PROTOCOL];
    // `token` may be a function, asked at every connection: a connection closes with 4401
    // when its token expires, and the next one goes with a fresh token.
    var token = typeof self.token === "function" ? self.token() : self.token;
    if (token) protocols.push("nexus.bearer." + base64url(token));
    var socket;
    try {
      socket = new WebSocket(self.url, protocols);
    } catch (err) {
      self.retry("connect failed: " + err);
      return;
    }
    self.socket = socket;
    self.status("connecting", { attempt: self.attempt });
    socket.onopen = function () {
      self.alive();
    };
    socket.onmessage = function (event) {
      self.alive();
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      self.receive(frame);
    };
    socket.onclose = function (event) {
      if (self.socket !== socket) return;
      self.socket = null;
      clearTimeout(self.watchdog);
      if (event.code >= 4500 && event.code < 5000) {
        self.status("closed", { code: event.code, reason: event.reason });
        return;
      }
      self.retry(event.code + " " + event.reason);
    };
    socket.onerror = function () {};
  };

  // Any frame proves the link alive; a ping of our own makes the server answer in time.
  NexusNotifications.prototype.alive = function () {
    var self = this;
    clearTimeout(self.watchdog);
    self.watchdog = setTimeout(function () {
      if (self.socket) self.socket.close(4000, "no frame within the ping interval");
    }, self.pingInterval + 10000);
  };

  NexusNotifications.prototype.retry = function (why) {
    var self = this;
    if (self.closed) return;
    var ceiling = Math.min(self.maxDelay, self.minDelay * Math.pow(2, self.attempt));
    var delay = Math.random() * ceiling;
    self.attempt += 1;
    self.status("reconnecting", { attempt: self.attempt, delay: delay, why: why });
    self.timer = setTimeout(function () {
      self.connect();
    }, delay);
  };

  NexusNotifications.prototype.send = function (frame) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(frame));
  };

  NexusNotifications.prototype.receive = function (frame) {
    var self = this;
    var sub;
    switch (frame.type) {
      case "ready":
        self.attempt = 0;
        self.pingInterval = frame.ping_interval_ms || self.pingInterval;
        self.status("open", frame);
        Object.keys(self.subs).forEach(function (name) {
          self.sendSubscribe(name);
        });
        self.pinger && clearInterval(self.pinger);
        self.pinger = setInterval(function () {
          self.send({ type: "ping" });
        }, self.pingInterval);
        break;
      case "subscribed":
        sub = self.subs[frame.sub];
        if (!sub) return;
        if (!sub.epoch) {
          sub.epoch = frame.epoch;
          sub.position = frame.position;
        }
        if (sub.handlers.subscribed) sub.handlers.subscribed(frame);
        break;
      case "notification":
        sub = self.byProjection(frame.projection);
        if (!sub) return;
        var fresh = take(sub, frame);
        if (fresh && sub.handlers.notification) sub.handlers.notification(fresh);
        break;
      case "reset":
        sub = self.byProjection(frame.projection);
        if (!sub) return;
        sub.epoch = frame.epoch;
        sub.position = frame.position;
        sub.above = {};
        if (sub.handlers.reset) sub.handlers.reset(frame);
        break;
      case "throttled":
        Object.keys(self.subs).forEach(function (name) {
          var h = self.subs[name].handlers;
          if (h.throttled) h.throttled(frame);
        });
        break;
      case "error":
        sub = frame.sub && self.subs[frame.sub];
        if (sub && sub.handlers.error) sub.handlers.error(frame);
        self.status("error", frame);
        break;
      default:
        break;
    }
  };

  // Takes a notification in: what of it is new (null: nothing), moving the subscription's mark
  // to its `resume` and remembering its document while it is above the mark (`sub.above`:
  // document -> the position, aggregate and version delivered).
  function take(sub, note) {
    var known = sub.epoch === note.epoch ? sub.position : null;
    if (known === null) sub.above = {};
    var mark = Math.max(note.resume === undefined ? note.position : note.resume, known || 0);
    var key = JSON.stringify([note.collection, note.id]);
    var last = sub.above[key];
    var fresh = note;
    if ((known !== null && note.position <= known) || (last && note.position <= last.position)) {
      fresh = null;
    } else if (last && note.coalesced && note.aggregate_id === last.aggregate &&
               note.coalesced.from_version <= last.version) {
      // A replay folds changes after the mark, some of which were delivered: the range starts
      // after the version delivered.
      var count = Math.min(note.coalesced.count, note.aggregate_version - last.version);
      fresh = Object.assign({}, note);
      if (count >= 2) fresh.coalesced = { count: count, from_version: last.version + 1 };
      else delete fresh.coalesced;
    }
    if (fresh && fresh.position > mark) {
      sub.above[key] = { position: fresh.position, aggregate: fresh.aggregate_id, version: fresh.aggregate_version };
    }
    for (var k in sub.above) {
      if (sub.above[k].position <= mark) delete sub.above[k];
    }
    sub.epoch = note.epoch;
    sub.position = mark;
    return fresh;
  }

  NexusNotifications.prototype.byProjection = function (projection) {
    for (var name in this.subs) {
      if (this.subs[name].spec.projection === projection) return this.subs[name];
    }
    return null;
  };

  NexusNotifications.prototype.sendSubscribe = function (name) {
    var sub = this.subs[name];
    var frame = { type: "subscribe", sub: name, projection: sub.spec.projection };
    if (sub.spec.collection) frame.collection = sub.spec.collection;
    if (sub.spec.id) frame.id = sub.spec.id;
    if (sub.spec.filter) frame.filter = sub.spec.filter;
    if (sub.epoch) frame.since = sub.epoch + ":" + sub.position;
    this.send(frame);
  };

  // Follows `spec` ({projection, collection?, id?, filter?}; one subscription per projection)
  // under `name`; subscribing again under the same name replaces it and resumes from the last
  // position seen. `handlers`: notification, reset, subscribed, throttled, error.
  NexusNotifications.prototype.subscribe = function (name, spec, handlers) {
    var previous = this.subs[name];
    var same = previous && previous.spec.projection === spec.projection;
    this.subs[name] = {
      spec: spec,
      handlers: handlers || {},
      epoch: same ? previous.epoch : null,
      position: same ? previous.position : 0,
      above: same ? previous.above : {},
    };
    this.sendSubscribe(name);
  };

  NexusNotifications.prototype.unsubscribe = function (name) {
    delete this.subs[name];
    this.send({ type: "unsubscribe", sub: name });
  };

  // Where `name`'s projection resumes from (its `resume` mark), as `epoch:position`.
  NexusNotifications.prototype.position = function (name) {
    var sub = this.subs[name];
    return sub && sub.epoch ? sub.epoch + ":" + sub.position : null;
  };

  NexusNotifications.prototype.close = function () {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    clearInterval(this.pinger);
    if (this.socket) this.socket.close(1000, "client closed");
    this.socket = null;
  };

  global.NexusNotifications = NexusNotifications;
})(typeof globalThis !== "undefined" ? globalThis : this);

"use strict";
(function () {
  const body = document.body;
  const refresh = Number(body.dataset.refreshMs) || 2000;
  const live = document.getElementById("live");
  const updated = document.getElementById("updated");

  function el(tag, attrs, kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k.startsWith("data-") || k === "class" || k === "title" || k === "scope" || k === "colspan" || k === "id"
          || k.startsWith("aria-")) {
        e.setAttribute(k, String(v));
      }
    }
    for (const kid of kids || []) {
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }
  function ago(ms) {
    const s = Math.floor(Math.max(0, ms) / 1000);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }
  function utc(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }
  function dur(ms) {
    if (ms < 1000) return ms + "ms";
    return ms / 1000 + "s";
  }
  function healthText(h) {
    if (!h) return "no active health check (passive detection only)";
    const what = h.path !== null ? h.kind + " GET " + h.path : h.kind + " connect";
    return "health check: " + what + " every " + dur(h.interval_ms) + ", timeout " + dur(h.timeout_ms) +
      ", rise " + h.rise + ", fall " + h.fall;
  }
  function checkCells(b, hasCheck) {
    const c = b.last_check;
    if (c && c.result === "success") return ["ok", "\u2713 ok", "last probe succeeded"];
    if (c) return ["fail", "\u2717 " + c.reason, "last probe failed"];
    if (hasCheck) return ["pending", "not yet", "no probe has finished yet"];
    return ["passive", "\u2014", "no active health check; failures on live traffic take it out"];
  }
  function stateNote(b) {
    if (b.down_by !== "traffic") return null;
    if (b.in_rotation) {
      return ["live traffic \u00b7 tried anyway",
        "out by live-traffic failures; nothing else in the pool is up, so it is tried anyway"];
    }
    return ["live traffic", "out by live-traffic failures (connect, reset, timeout)"];
  }
  function th(text, cls) {
    return el("th", cls ? { scope: "col", class: cls } : { scope: "col" }, [text]);
  }
  function listeners(s) {
    const rows = s.listeners.map((l) => el("tr", { "data-listener": l.name }, [
      el("td", {}, [l.name]), el("td", { class: "mono" }, [l.bind]),
      el("td", {}, [l.tls ? l.mode + " + tls" : l.mode]), el("td", {}, [l.pool]),
    ]));
    if (rows.length === 0) rows.push(el("tr", {}, [el("td", { colspan: 4, class: "none" }, ["no listeners"])]));
    return el("section", { class: "listeners", "aria-labelledby": "h-listeners" }, [
      el("h2", { id: "h-listeners" }, ["Listeners"]),
      el("table", {}, [
        el("thead", {}, [el("tr", {}, [th("listener"), th("bind"), th("mode"), th("pool")])]),
        el("tbody", {}, rows),
      ]),
    ]);
  }
  function pool(s, p) {
    const n = p.backends.length;
    const count = p.backends_up === n ? "all" : p.backends_up === 0 ? "none" : "some";
    const rows = p.backends.map((b) => {
      const [cc, ct, ctitle] = checkCells(b, p.health !== null);
      const note = stateNote(b);
      const state = [el("span", { class: "state " + b.state }, [b.state === "up" ? "UP" : "DOWN"])];
      if (note) state.push(" ", el("span", { class: "why", title: note[1] }, [note[0]]));
      return el("tr", { "data-backend": b.name, "data-state": b.state, class: b.state }, [
        el("td", {}, [b.name]),
        el("td", { class: "mono" }, [b.addr]),
        el("td", {}, state),
        el("td", { title: utc(b.since_ms) }, [ago(s.now_ms - b.since_ms)]),
        el("td", { class: "check " + cc, title: ctitle }, [ct]),
        el("td", { class: "num" }, [b.weight]),
        el("td", { class: "num" }, [b.in_flight]),
        el("td", { class: "num" }, [b.requests_per_second.toFixed(1)]),
        el("td", { class: b.error_ratio !== null && b.error_ratio >= 0.05 ? "num bad" : "num" },
          [b.error_ratio === null ? "\u2014" : Math.round(b.error_ratio * 1000) / 10 + "%"]),
      ]);
    });
    return el("section", { class: "pool", "data-pool": p.name }, [
      el("h2", {}, ["Pool ", el("span", { class: "name" }, [p.name])]),
      el("p", { class: "poolmeta" }, [
        el("span", { class: "tag" }, [p.strategy]), " ",
        el("span", { class: "count " + count }, [p.backends_up + " of " + n + " up"]), " ",
        el("span", { class: "check-desc" }, [healthText(p.health)]),
      ]),
      el("table", {}, [
        el("thead", {}, [el("tr", {}, [
          th("backend"), th("address"), th("state"), th("since"), th("last check"),
          th("weight", "num"), th("in flight", "num"), th("req/s", "num"), th("5xx", "num"),
        ])]),
        el("tbody", {}, rows),
      ]),
    ]);
  }
  function render(s) {
    document.getElementById("content").replaceChildren(listeners(s), ...s.pools.map((p) => pool(s, p)));
    updated.textContent = "as of " + utc(s.now_ms);
    body.dataset.nowMs = String(s.now_ms);
    body.dataset.source = "live";
  }
  function tick() {
    fetch("/status.json", { cache: "no-store" })
      .then((r) => {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then((s) => {
        render(s);
        live.className = "";
        live.textContent = "live, refreshes every " + dur(refresh);
      })
      .catch((e) => {
        live.className = "stale";
        live.textContent = "cannot reach lb (" + e.message + "), retrying";
      })
      .finally(() => setTimeout(tick, refresh));
  }
  tick();
})();

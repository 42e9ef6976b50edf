// The dashboard: signs in once with a token (exchanged for an HttpOnly session cookie, see
// docs/adr/0012-dashboard-authentication.md), then follows /stats/stream and /events/stream.
"use strict";

const STATUSES = ["created", "rider_assigned", "picked_up", "completed", "cancelled"];
const FEED_MAX = 50;
const RETRY_MS = 3000;
const $ = (id) => document.getElementById(id);

let streams = [];
const seen = new Set();

function setConnection(text, state) {
  const badge = $("connection");
  badge.textContent = text;
  badge.className = "connection " + state;
}

async function sessionIsOpen() {
  try {
    const reply = await fetch("/dashboard/session", { credentials: "same-origin" });
    return reply.status === 204;
  } catch {
    return false;
  }
}

function stop() {
  streams.forEach((stream) => stream.close());
  streams = [];
}

function showSignIn(message) {
  stop();
  $("live").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  setConnection("signed out", "off");
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  const reply = await fetch("/dashboard/session", {
    method: "POST",
    headers: { Authorization: "Bearer " + token },
    credentials: "same-origin",
  });
  if (reply.status === 204) {
    start();
  } else {
    showSignIn(reply.status === 401 ? "That token is not valid." : "Sign-in failed (" + reply.status + ").");
  }
}

async function signOut() {
  await fetch("/dashboard/session", { method: "DELETE", credentials: "same-origin" });
  showSignIn();
}

// An EventSource reconnects by itself after a dropped connection, but gives up on an answer
// other than 200 (a 401 once the session expired, a 503 past the stream bound): then ask why.
async function closed() {
  stop();
  if (await sessionIsOpen()) {
    setConnection("reconnecting", "wait");
    setTimeout(start, RETRY_MS);
  } else {
    showSignIn("The session ended; sign in again.");
  }
}

function follow(path, kind, render) {
  const stream = new EventSource(path);
  stream.addEventListener(kind, (message) => render(JSON.parse(message.data)));
  stream.onopen = () => setConnection("live", "on");
  stream.onerror = () => {
    if (stream.readyState === EventSource.CLOSED) {
      closed();
    } else {
      setConnection("reconnecting", "wait");
    }
  };
  return stream;
}

function start() {
  stop();
  $("sign-in").hidden = true;
  $("live").hidden = false;
  $("sign-out").hidden = false;
  streams = [follow("/stats/stream", "stats", renderStats), follow("/events/stream", "event", addEvent)];
}

function flash(element) {
  element.classList.remove("changed");
  void element.offsetWidth; // restart the animation
  element.classList.add("changed");
}

function renderStats(stats) {
  for (const status of STATUSES) {
    const value = $("count-" + status);
    const next = String(stats.deliveries_by_status[status]);
    if (value.textContent !== next) {
      value.textContent = next;
      flash(value);
    }
  }
  const riders = $("active-riders");
  if (riders.textContent !== String(stats.active_riders)) {
    riders.textContent = String(stats.active_riders);
    flash(riders);
  }
  $("updated").textContent = new Date().toLocaleTimeString();
}

function cell(className, text) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

function addEvent(event) {
  if (seen.has(event.event_id)) return;
  seen.add(event.event_id);
  const kind = event.type.replace(/^delivery\./, "");
  const item = document.createElement("li");
  item.dataset.eventId = event.event_id;
  item.dataset.type = event.type;
  item.title = "delivery " + event.delivery_id;
  item.append(
    cell("time", new Date(event.occurred_at).toLocaleTimeString()),
    cell("kind " + kind, kind.replace("_", " ")),
    // The tail of the id: a UUID v7 starts with its time, alike for deliveries made together.
    cell("delivery", "\u2026" + event.delivery_id.slice(-8) + " v" + event.version),
    cell("actor", event.actor_role + " " + event.actor_id),
  );
  const feed = $("feed");
  feed.prepend(item);
  while (feed.children.length > FEED_MAX) {
    seen.delete(feed.lastElementChild.dataset.eventId);
    feed.lastElementChild.remove();
  }
  $("feed-empty").hidden = true;
}

document.addEventListener("DOMContentLoaded", async () => {
  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  if (await sessionIsOpen()) {
    start();
  } else {
    showSignIn();
  }
});

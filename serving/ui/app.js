// The recommendation explorer. Every string from the service (titles come from data) is put on
// the page with textContent, never as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);
let liveTimer = null;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "-";
  return typeof value === "number" ? value.toFixed(digits) : String(value);
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

async function getJson(url) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" } });
  } catch (err) {
    throw new Error("the service did not answer (" + err.message + ")");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const reason = body && body.error ? body.error : response.statusText;
    throw new Error(reason + " (HTTP " + response.status + ")");
  }
  return body;
}

function itemLink(item) {
  const li = element("li");
  const link = element("a", item.title || "item " + item.item_id, "item-link");
  link.href = "#user";
  link.dataset.item = item.item_id;
  link.addEventListener("click", (event) => { event.preventDefault(); showSimilar(item.item_id); });
  li.append(link, element("span", "#" + item.item_id, "tag"));
  if (item.category) li.append(element("span", item.category, "tag"));
  if (item.source) li.append(element("span", item.source, "tag " + item.source));
  return li;
}

function fillList(list, items, empty) {
  list.replaceChildren(...items.map(itemLink));
  if (!items.length) list.append(element("li", empty, "hint"));
}

// -- users ------------------------------------------------------------------------------------

async function showUser(raw) {
  const userId = String(raw).trim();
  $("#similar").hidden = true;
  if (!/^\d+$/.test(userId)) {
    clearUser();
    showError("\"" + userId.slice(0, 20) + "\" is not a user id: user ids are whole numbers (0 or more).");
    return;
  }
  location.hash = "user=" + userId;
  const device = $("#device-input").value;
  try {
    const page = await getJson("/ui/api/users/" + userId + "?k=10&device=" + encodeURIComponent(device));
    showError("");
    renderUser(page);
  } catch (err) {
    clearUser();
    showError("Could not recommend for user " + userId + ": " + err.message);
  }
}

function clearUser() {
  $("#user-summary").textContent = "";
  $("#history").replaceChildren();
  $("#recommendations tbody").replaceChildren();
}

function renderUser(page) {
  const notes = ["user " + page.user_id, "model " + page.model_version];
  if (page.variant) notes.push("A/B variant " + page.variant);
  notes.push(page.n_candidates + " candidates scored");
  if (page.left_out_by_rules !== null) notes.push(page.left_out_by_rules + " better-scored candidates left out by the rules (seen, category cap, dedup)");
  if (page.cold_start) notes.push("unknown user: cold-start trending list");
  if (page.degraded) notes.push("DEGRADED: " + page.reasons.join("; "));
  $("#user-summary").textContent = notes.join(" · ");
  fillList($("#history"), page.history, page.cold_start ? "no history: a new user" : "no recent history");
  const rows = page.recommendations.map((item, i) => {
    const row = element("tr");
    const title = element("td");
    const link = element("a", item.title || "item " + item.item_id, "item-link");
    link.href = "#user";
    link.addEventListener("click", (event) => { event.preventDefault(); showSimilar(item.item_id); });
    title.append(link);
    if (item.is_new) title.append(element("span", "new", "tag"));
    const source = element("td");
    source.append(element("span", item.source, "tag " + item.source));
    row.append(element("td", i + 1), element("td", item.item_id), title, element("td", item.category || "-"),
               source, element("td", fmt(item.ranker_score), "num"), element("td", fmt(item.ranker_rank, 0), "num"),
               element("td", fmt(item.rule_adjustment), "num"));
    return row;
  });
  $("#recommendations tbody").replaceChildren(...rows);
}

async function showSimilar(itemId) {
  try {
    const found = await getJson("/ui/api/items/" + encodeURIComponent(itemId) + "/similar?k=8");
    showError("");
    const item = found.item;
    $("#similar-title").textContent = "Similar to " + (item.title || "item " + item.item_id) +
      (item.category ? " (" + item.category + ")" : "");
    fillList($("#similar-embedding"), found.embedding_neighbours, "none");
    fillList($("#similar-covisit"), found.covisitation, "no co-visited items");
    $("#similar").hidden = false;
    $("#similar").scrollIntoView({ block: "nearest" });
  } catch (err) {
    showError("Could not find items similar to " + itemId + ": " + err.message);
  }
}

async function loadPicks() {
  try {
    const users = await getJson("/ui/api/sample-users");
    $("#user-picks").replaceChildren(...users.map((id) => {
      const button = element("button", id, "pick");
      button.type = "button";
      button.addEventListener("click", () => { $("#user-input").value = id; showUser(id); });
      return button;
    }));
  } catch (err) {
    showError("No model in service yet: " + err.message);
  }
}

// -- model, live, reports ---------------------------------------------------------------------

function facts(list, pairs) {
  list.replaceChildren(...pairs.flatMap(([name, value]) => [element("dt", name), element("dd", value)]));
}

async function showModel() {
  try {
    const model = await getJson("/model");
    showError("");
    const manifest = model.manifest || {};
    const window = manifest.training_window || {};
    const pairs = [["version", model.version], ["loaded at", model.loaded_at], ["bundle", model.bundle_dir],
                   ["training window", (window.start || "?") + " .. " + (window.end || "?")],
                   ["ranker features", (manifest.ranker_features || []).length],
                   ["data fingerprint", manifest.data_fingerprint || "-"]];
    if (model.experiment) {
      for (const [name, v] of Object.entries(model.experiment.variants)) {
        pairs.push(["variant " + name, (v.share * 100).toFixed(0) + "% -> " + (v.version || "not loaded")]);
      }
    }
    if (model.last_reload_error) pairs.push(["last reload error", model.last_reload_error]);
    facts($("#model-facts"), pairs);
    renderMetrics(manifest.metrics || {});
    $("#model-manifest").textContent = JSON.stringify(manifest, null, 2);
  } catch (err) {
    showError("Could not read the model: " + err.message);
  }
}

function renderMetrics(metrics) {
  const models = Object.keys(metrics);
  const names = models.length ? Object.keys(metrics[models[0]]) : [];
  const head = element("tr");
  head.append(element("th", "model"), ...names.map((n) => element("th", n)));
  $("#model-metrics thead").replaceChildren(head);
  $("#model-metrics tbody").replaceChildren(...models.map((model) => {
    const row = element("tr", null, model === "two_stage" ? "ours" : "");
    row.append(element("td", model), ...names.map((n) => element("td", fmt(metrics[model][n], 4), "num")));
    return row;
  }));
}

function percent(share) {
  return share === null || share === undefined ? "-" : (share * 100).toFixed(1) + "%";
}

async function refreshLive() {
  try {
    const live = await getJson("/ui/api/live");
    const latency = live.latency_ms;
    facts($("#live-facts"), [
      ["recommendation requests", live.recommendation_requests],
      ["request rate", live.request_rate_per_s === null ? "measuring..." : live.request_rate_per_s.toFixed(2) + " /s"],
      ["latency p50 / p95 / p99", [latency.p50, latency.p95, latency.p99].map((v) => fmt(v, 1)).join(" / ") + " ms"],
      ["degraded share", percent(live.degraded_share)],
      ["cold-start share", percent(live.cold_start_share)],
      ["shed (503, overloaded)", live.shed],
      ["item cache age", live.item_cache_age_s === null ? "-" : live.item_cache_age_s.toFixed(1) + " s"],
      ["online store", live.online_store_up === null ? "-" : live.online_store_up ? "up" : "DOWN"],
    ]);
  } catch (err) {
    showError("Could not read the live metrics: " + err.message);
  }
}

async function showReports() {
  try {
    const reports = await getJson("/ui/api/reports");
    showError("");
    const labels = { training: "Training report (offline metrics vs baselines)", drift: "Drift report (Evidently)",
                     ab: "A/B report" };
    $("#report-links").replaceChildren(...Object.entries(labels).map(([kind, label]) => {
      const li = element("li");
      if (reports[kind]) {
        const link = element("a", label);
        link.href = reports[kind];
        link.target = "_blank";
        link.rel = "noopener";
        li.append(link, element("span", reports[kind], "tag"));
      } else {
        li.append(element("span", label + ": none yet (make demo writes one)", "hint"));
      }
      return li;
    }));
  } catch (err) {
    showError("Could not list the reports: " + err.message);
  }
}

// -- navigation -------------------------------------------------------------------------------

const pages = { user: () => {}, model: showModel, live: refreshLive, reports: showReports };

function route() {
  const [page, value] = (location.hash.slice(1) || "user").split("=");
  const name = page in pages ? page : "user";
  for (const key of Object.keys(pages)) $("#page-" + key).hidden = key !== name;
  document.querySelectorAll("nav a[data-page]").forEach((a) => a.classList.toggle("active", a.dataset.page === name));
  clearInterval(liveTimer);
  if (name === "live") liveTimer = setInterval(refreshLive, 2000);
  pages[name]();
  if (name === "user" && value && value !== $("#user-input").value) {
    $("#user-input").value = value;
    showUser(value);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#user-form").addEventListener("submit", (event) => { event.preventDefault(); showUser($("#user-input").value); });
  window.addEventListener("hashchange", route);
  loadPicks();
  route();
});

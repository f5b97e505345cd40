// The chat page: fills its controls from /api/categories and /api/limits, posts to /api/answer.
"use strict";

const $ = (id) => document.getElementById(id);
const NUMBERS = ["beam_size", "n", "temperature", "top_p", "top_k", "seed", "max_new_tokens", "no_repeat_ngram_size"];
// history: this conversation's turns (question, answer, ...), sent with every question; "New chat" clears it
const state = { history: [], maxHistory: 20, busy: false };

async function fetchJSON(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("cannot reach the server (" + err.message + ")");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // not JSON: the status line below says what went wrong
  }
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : `${response.status} ${response.statusText}`;
    throw new Error(detail);
  }
  return body;
}

function showError(text) {
  const el = $("error");
  el.textContent = text || "";
  el.hidden = !text;
}

function bubble(role, text) {
  const log = $("log");
  const empty = log.querySelector(".empty");
  if (empty) empty.remove();
  const el = document.createElement("div");
  el.className = `bubble ${role}`;
  el.textContent = text;
  log.append(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function fillAnswer(el, reply) {
  const [best, ...rest] = reply.answers;
  el.classList.remove("loading");
  el.textContent = best && best.text ? best.text : "(empty answer)";
  if (rest.length) {
    const list = document.createElement("ol");
    list.className = "alts";
    list.start = 2;
    for (const a of rest) {
      const item = document.createElement("li");
      item.textContent = (a.text || "(empty answer)") + (a.score === null ? "" : `  [${a.score.toFixed(3)}]`);
      list.append(item);
    }
    el.append(list);
  }
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = [reply.category, reply.decoding.strategy, `${Math.round(reply.latency_ms)} ms`,
    reply.truncated ? "question cut to the model's length" : ""].filter(Boolean).join(" · ");
  el.append(meta);
}

function decoding() {
  const strategy = $("strategy").value;
  const options = { strategy };
  for (const id of NUMBERS) {
    const field = $(id);
    if (field.closest("[hidden]") || field.value === "") continue; // the server's default applies
    options[id] = Number(field.value);
  }
  if (strategy === "greedy") delete options.n;
  return options;
}

function showControlsFor(strategy) {
  for (const label of document.querySelectorAll("[data-for]")) {
    label.hidden = !label.dataset.for.split(" ").includes(strategy);
  }
}

async function ask(question) {
  state.busy = true;
  $("send").disabled = true;
  showError("");
  const mine = bubble("user", question);
  const theirs = bubble("bot loading", "…");
  try {
    const reply = await fetchJSON("/api/answer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        question,
        category: $("category").value || null,
        history: state.history.slice(-state.maxHistory),
        decoding: decoding(),
      }),
    });
    fillAnswer(theirs, reply);
    state.history.push(question, reply.answers.length ? reply.answers[0].text : "");
    state.history = state.history.slice(-state.maxHistory);
  } catch (err) {
    theirs.remove();
    mine.classList.add("failed");
    showError(err.message);
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

async function load() {
  showControlsFor($("strategy").value);
  try {
    const [cats, caps] = await Promise.all([fetchJSON("/api/categories"), fetchJSON("/api/limits")]);
    for (const name of cats.categories) $("category").append(new Option(name, name));
    if (cats.condition_field === "speaker") { // a persona model: the "categories" are characters
      $("category-label").textContent = "Character";
      $("category").options[0].text = "anyone";
    }
    if (!cats.conditioned) {
      $("note").textContent = "This model was trained without categories: they do not change its answers.";
      $("note").hidden = false;
    }
    for (const id of NUMBERS) {
      const [low, high] = caps.bounds[id] || [];
      if (low !== undefined) Object.assign($(id), { min: low, max: high });
      $(id).value = caps.defaults[id];
    }
    $("question").maxLength = caps.max_question_chars;
    state.maxHistory = caps.max_history;
    document.body.dataset.ready = "true";
  } catch (err) {
    showError("could not load the model's options: " + err.message);
  }
}

$("strategy").addEventListener("change", (e) => showControlsFor(e.target.value));
$("reset").addEventListener("click", () => {
  state.history = [];
  $("log").replaceChildren();
  showError("");
  $("question").focus();
});
$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.busy) return;
  $("question").value = "";
  ask(question);
});
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("ask").requestSubmit();
  }
});
load();

// The chat page: fills its controls from /api/categories and /api/limits, streams its answers from
// /v1/chat/completions (Server-Sent Events). Text from the server only ever goes in as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const NUMBERS = ["beam_size", "n", "temperature", "top_p", "top_k", "seed", "max_new_tokens", "no_repeat_ngram_size"];
// the form's names -> the fields of /v1/chat/completions (the rest keep their names)
const FIELD = { max_new_tokens: "max_tokens" };
const KEY_STORE = "chitchat.api_key"; // sessionStorage: the key lives as long as this tab
// history: this conversation's turns (question, answer, ...), sent with every question; "New chat" clears it
const state = { history: [], maxHistory: 20, busy: false, controller: null };

// ---- the API key: asked for on a 401, kept in sessionStorage, sent as Authorization: Bearer ----

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch (_) {
    return null; // storage disabled: the key is asked for again
  }
}

function storeKey(key) {
  try {
    sessionStorage.setItem(KEY_STORE, key);
  } catch (_) {
    // storage disabled: this request still uses it
  }
  state.key = key;
}

let keyAsk = null; // one question at a time, shared by the requests that got a 401 meanwhile
let keyAnswer = null;

function askKey(message) {
  if (keyAsk) return keyAsk;
  keyAsk = new Promise((resolve) => {
    keyAnswer = resolve;
    $("key-message").textContent = message;
    $("apikey").value = "";
    $("keyform").hidden = false;
    $("apikey").focus();
  }).finally(() => {
    keyAsk = null;
    keyAnswer = null;
    $("keyform").hidden = true;
  });
  return keyAsk;
}

function answerKey(key) {
  if (keyAnswer) keyAnswer(key);
}

function aborted() {
  return new DOMException("the request was stopped", "AbortError");
}

// fetch with the key; a 401 asks for it (again, with the server's message) and retries
async function authFetch(url, options = {}) {
  for (;;) {
    const key = storedKey() || state.key || null;
    const headers = new Headers(options.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(url, { ...options, headers });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error("cannot reach the server (" + err.message + ")");
    }
    if (response.status !== 401) return response;
    const message = await errorText(response);
    if ((storedKey() || state.key || null) !== key) continue; // another request got a new key meanwhile
    const given = await askKey(message);
    if (options.signal && options.signal.aborted) throw aborted();
    if (!given) throw new Error(message);
    storeKey(given);
  }
}

// the one line an error response carries: /api's `detail`, /v1's `error.message`, else the status
async function errorText(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // not JSON: the status line says what went wrong
  }
  if (body && typeof body.detail === "string") return body.detail;
  if (body && body.error && typeof body.error.message === "string") return body.error.message;
  return `${response.status} ${response.statusText}`.trim();
}

async function fetchJSON(url, options) {
  const response = await authFetch(url, options);
  if (!response.ok) throw new Error(await errorText(response));
  try {
    return await response.json();
  } catch (_) {
    throw new Error(`${url}: the answer is not JSON`);
  }
}

// ---- the page ----

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

function decoding() {
  const strategy = $("strategy").value;
  const options = { strategy };
  for (const id of NUMBERS) {
    const field = $(id);
    if (field.closest("[hidden]") || field.value === "") continue; // the server's default applies
    options[id] = Number(field.value);
  }
  if (options.strategy === "nucleus" && options.temperature === 0) options.strategy = "greedy"; // 0 = greedy
  if (options.strategy === "greedy") {
    delete options.n;
    delete options.temperature;
  }
  return options;
}

// the body of /v1/chat/completions: history turns as user/assistant messages, the question last
function chatBody(question) {
  const start = Math.max(0, state.history.length - state.maxHistory);
  const messages = state.history.slice(start).map((content, i) => ({
    role: (start + i) % 2 === 0 ? "user" : "assistant", content,
  }));
  messages.push({ role: "user", content: question });
  const body = { messages, stream: true, category: $("category").value || null };
  for (const [name, value] of Object.entries(decoding())) body[FIELD[name] || name] = value;
  return body;
}

function showControlsFor(strategy) {
  for (const label of document.querySelectorAll("[data-for]")) {
    label.hidden = !label.dataset.for.split(" ").includes(strategy);
  }
}

function setBusy(busy) {
  state.busy = busy;
  $("send").hidden = busy;
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("stop").disabled = !busy;
}

// the answer bubble: choice 0 in span.text, choices 1.. as a numbered list under it, a meta line last
class Answer {
  constructor(el) {
    this.el = el;
    this.choices = []; // {node, text, finish} per choice index
    this.list = null;
    this.started = false;
  }

  slot(index) {
    while (this.choices.length <= index) {
      const node = document.createElement(this.choices.length ? "li" : "span");
      if (!this.choices.length) node.className = "text";
      this.choices.push({ node, text: "", finish: null });
    }
    return this.choices[index];
  }

  start() { // the first text: the "…" goes, the text span comes
    if (this.started) return;
    this.started = true;
    this.el.classList.remove("loading");
    this.el.classList.add("streaming");
    this.el.replaceChildren(this.slot(0).node);
  }

  place(index) { // choices 1.. go in the list, in index order
    if (index === 0) return;
    if (!this.list) {
      this.list = document.createElement("ol");
      this.list.className = "alts";
      this.list.start = 2;
      this.slot(0).node.after(this.list);
    }
    for (let i = 1; i <= index; i++) {
      const node = this.slot(i).node;
      if (!node.isConnected) this.list.append(node);
    }
  }

  add(index, piece) {
    this.start();
    const choice = this.slot(index);
    this.place(index);
    choice.text += piece;
    choice.node.textContent = choice.text; // text only, never markup
  }

  end(how, meta) { // how: done | stopped | failed
    this.start();
    this.place(this.choices.length - 1);
    this.el.classList.remove("streaming");
    this.el.classList.add(how);
    if (how === "done") {
      for (const choice of this.choices) if (!choice.text) choice.node.textContent = "(empty answer)";
    }
    if (how === "stopped") {
      const mark = document.createElement("span");
      mark.className = "stopped-mark";
      mark.textContent = this.text ? " (stopped)" : "(stopped)";
      this.slot(0).node.after(mark);
    }
    const line = document.createElement("span");
    line.className = "meta";
    line.textContent = meta.filter(Boolean).join(" · ");
    this.el.append(line);
  }

  get text() {
    return this.choices.length ? this.choices[0].text : "";
  }
}

// Server-Sent Events from a fetch response: calls onData(payload) per `data:` event
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  const flush = (final) => {
    buffer = buffer.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1 || (final && buffer.trim())) {
      const block = cut === -1 ? buffer : buffer.slice(0, cut);
      buffer = cut === -1 ? "" : buffer.slice(cut + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (data && onData(data) === false) return false;
    }
    return true;
  };
  let open = true;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        open = false;
        buffer += decoder.decode();
        flush(true);
        return;
      }
      buffer += decoder.decode(value, { stream: true });
      if (!flush(false)) { // [DONE]: what follows (the body's end) is read, so the connection stays usable
        while (!(await reader.read()).done) { /* nothing comes after [DONE] */ }
        open = false;
        return;
      }
    }
  } finally {
    if (open) reader.cancel().catch(() => {}); // done early, or a bad event: the rest is not read
  }
}

async function ask(question) {
  setBusy(true);
  showError("");
  const controller = new AbortController();
  state.controller = controller;
  const mine = bubble("user", question);
  const answer = new Answer(bubble("bot loading", "…"));
  const began = performance.now();
  const category = $("category").value || null;
  const body = chatBody(question);
  let finished = false;
  try {
    const response = await authFetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (data) => {
      if (data === "[DONE]") {
        finished = true;
        return false;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch (_) {
        throw new Error("the server sent a broken event");
      }
      if (chunk.error) throw new Error(chunk.error.message || "the server stopped this answer");
      for (const choice of chunk.choices || []) {
        answer.slot(choice.index);
        if (choice.delta && choice.delta.content) answer.add(choice.index, choice.delta.content);
        if (choice.finish_reason) answer.slot(choice.index).finish = choice.finish_reason;
      }
      return true;
    });
    if (!finished) throw new Error("the connection closed before the answer was complete");
    const cut = answer.choices.some((c) => c.finish === "length");
    answer.end("done", [category, body.strategy, `${Math.round(performance.now() - began)} ms`,
      cut ? "cut at max tokens" : ""]);
    state.history.push(question, answer.text);
  } catch (err) {
    if (err.name === "AbortError" || controller.signal.aborted) {
      // stopped: the partial text stays; the model read it as this turn's answer only if there is some
      answer.end("stopped", [category, body.strategy, "stopped"]);
      if (answer.text) state.history.push(question, answer.text);
    } else {
      if (answer.text) {
        answer.end("failed", [category, body.strategy, "failed"]);
      } else {
        answer.el.remove();
      }
      mine.classList.add("failed");
      showError(err.message);
    }
  } finally {
    const keep = state.maxHistory + (state.maxHistory % 2); // whole turns: questions stay the user's
    state.history = state.history.slice(-keep);
    if (state.controller === controller) state.controller = null;
    setBusy(false);
  }
}

function stop() {
  if (!state.controller) return;
  state.controller.abort();
  answerKey(null); // a key question this answer was waiting on is dropped too
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
  stop();
  state.history = [];
  $("log").replaceChildren();
  showError("");
  $("question").focus();
});
$("stop").addEventListener("click", stop);
$("keyform").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("apikey").value.trim();
  if (key) answerKey(key);
});
$("key-cancel").addEventListener("click", () => answerKey(null));
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

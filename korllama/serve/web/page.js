// korllama's grading page: plain JavaScript, no libraries (it works offline). It builds the form from the spec's
// columns that the service wrote into the page, grades through the service's own POST /v1/grade?explain=true, and
// grades a file as a job (/page/jobs) that it polls.
"use strict";

const TOKEN_KEY = "korllama-token";
const SHOWN_REASONS = 3;
const ASKED_REASONS = 20;  // the service's most: every field of a spec of up to 20, so the 3 shown all move the grade
const state = { form: null, run: null, example: 0, fields: new Map() };
const $ = (id) => document.getElementById(id);

class NeedsToken extends Error {}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "lang") {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  node.append(...children);
  return node;
}

function show(node, on = true) { node.hidden = !on; }
function percent(p) { return (100 * p).toFixed(1) + "%"; }
function megabytes(bytes) { return (bytes / 1048576).toLocaleString("en", { maximumFractionDigits: 1 }) + " MB"; }

// --- the service, with the bearer token when there is one ---------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", "Bearer " + token);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new Error("The service did not answer (is it still running?).");
  }
  if (response.status === 401) {
    askForToken(token ? "The token was not accepted; check it and enter it again." : null);
    throw new NeedsToken();
  }
  return response;
}

async function detail(response) {
  // The service's own sentence: a string, or a 422's list of {loc, msg}.
  try {
    const body = await response.json();
    return body.detail !== undefined ? body.detail : `the service answered ${response.status}`;
  } catch (err) {
    return `the service answered ${response.status} ${response.statusText}`;
  }
}

function askForToken(problem) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("token-input").value = "";
  show($("token-panel"));
  $("token-problem").textContent = problem || "";
  show($("token-problem"), Boolean(problem));
  $("token-input").focus();
}

async function useToken(event) {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await loadRun();  // checks the token: a wrong one asks again, with a sentence
    $("token-input").value = "";
    show($("token-panel"), false);
    $("grade-button").focus();
  } catch (err) {
    if (!(err instanceof NeedsToken)) throw err;
  }
}

// --- the form ---------------------------------------------------------------------------------------------------------

function buildForm(form) {
  $("spec-name").textContent = "· " + form.spec;
  $("subtitle").textContent = form.description || `Grades the ${form.label.name} of one applicant or of a file.`;
  $("upload-limit").textContent = megabytes(form.max_upload_bytes);
  const fields = $("fields");
  fields.replaceChildren();
  form.columns.forEach((col, i) => {
    const id = `f${i}`;
    let input;
    if (col.kind === "select") {
      input = el("select", { id, name: col.name });
      input.append(el("option", { value: "", text: col.required ? "— choose —" : "— missing —" }));
      for (const option of col.options) input.append(el("option", { value: option.value, text: option.text }));
    } else {
      input = el("input", { id, name: col.name, type: "number", inputMode: col.step === 1 ? "numeric" : "decimal" });
      input.step = String(col.step);
      if (col.min !== null) input.min = String(col.min);
      if (col.max !== null) input.max = String(col.max);
    }
    input.setAttribute("aria-describedby", `${id}-hint ${id}-problem`);
    if (col.required) input.setAttribute("aria-required", "true");
    const label = el("label", { htmlFor: id }, el("span", { lang: "ko", text: col.name }));
    if (!col.required) label.append(" ", el("span", { class: "optional", text: "(optional)" }));
    const problem = el("p", { id: `${id}-problem`, class: "problem", hidden: true });
    const field = el("div", { class: "field", "data-field": col.name, "data-alias": col.alias },
      label, input, el("small", { id: `${id}-hint`, class: "hint", text: col.hint }), problem);
    fields.append(field);
    state.fields.set(col.name, field).set(col.alias, field);
  });
}

function clearProblems() {
  for (const field of new Set(state.fields.values())) {
    field.classList.remove("invalid");
    field.querySelector("input, select").removeAttribute("aria-invalid");
    show(field.querySelector(".problem"), false);
  }
  show($("form-problem"), false);
}

function markProblems(problems) {
  // A 422's `loc` is ["body", key] (the key as sent: header or English alias) or ["body"] for the body as a whole.
  let first = null;
  for (const problem of [].concat(problems)) {
    const loc = Array.isArray(problem.loc) ? problem.loc : [];
    const field = state.fields.get(String(loc[loc.length - 1]));
    const msg = typeof problem === "string" ? problem : problem.msg;
    if (field && loc.length > 1) {
      field.classList.add("invalid");
      const input = field.querySelector("input, select");
      input.setAttribute("aria-invalid", "true");
      const box = field.querySelector(".problem");
      box.textContent = box.hidden ? msg : box.textContent + " " + msg;
      show(box);
      first = first || input;
    } else {
      const box = $("form-problem");
      box.textContent = box.hidden ? msg : box.textContent + " " + msg;
      show(box);
    }
  }
  (first || $("form-problem")).focus?.();
}

function applicant() {
  // Values as typed (the service cleans them as a CSV cell); an empty optional field is a missing value, an empty
  // required one is left out so that the service says which field is missing.
  const body = {};
  for (const col of state.form.columns) {
    const value = state.fields.get(col.name).querySelector("input, select").value.trim();
    if (value !== "") body[col.name] = value;
    else if (!col.required) body[col.name] = null;
  }
  return body;
}

async function grade(event) {
  event.preventDefault();
  clearProblems();
  const button = $("grade-button");
  button.disabled = true;
  button.textContent = "Grading…";
  try {
    const response = await api(`/v1/grade?explain=true&top=${ASKED_REASONS}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(applicant()),
    });
    if (!response.ok) {
      show($("result"), false);
      markProblems(await detail(response));
      return;
    }
    showResult(await response.json());
  } catch (err) {
    if (!(err instanceof NeedsToken)) markProblems([{ loc: [], msg: err.message }]);
  } finally {
    button.disabled = false;
    button.textContent = "Grade";
  }
}

function bars(container, shares, top) {
  container.replaceChildren();
  for (const [label, p] of Object.entries(shares)) {
    container.append(el("div", { class: "bar" + (label === top ? " chosen" : ""), role: "listitem",
      "data-label": label, "data-probability": String(p), "aria-label": `${label}: ${percent(p)}` },
    el("span", { class: "name", lang: "ko", text: label }),
    el("div", { class: "track" }, el("div", { class: "fill", style: `width: ${(100 * p).toFixed(2)}%` })),
    el("span", { class: "value", text: percent(p) })));
  }
}

function showResult(result) {
  const form = state.form;
  $("grade-name").textContent = `${form.label.name} (${form.label.alias})`;
  $("grade").textContent = result.grade;
  const probs = result.probabilities;
  const likeliest = Object.keys(probs).reduce((a, b) => (probs[b] > probs[a] ? b : a));
  $("decision").textContent = result.decision === "argmax"
    ? "Decided by argmax: the most probable label."
    : `Decided by the run's ${result.decision} decision rule, which weighs rare labels up` +
      (likeliest !== result.grade ? ` (the most probable label is ${likeliest}).` : " (here it is also the most probable label).");
  bars($("bars"), probs, result.grade);
  showReasons(result);
  show($("result"));
  // the analyst who pressed Grade is taken to the answer, and a screen reader hears it
  $("result-status").textContent = `${form.label.name} ${result.grade} (${percent(probs[result.grade])})`;
  $("result-title").focus({ preventScroll: true });
  $("result").scrollIntoView({ block: "start", behavior: "instant" });
}

function showReasons(result) {
  // Only fields that change the grade's probability: those that raise it (largest first, the service's order), then
  // those that lower it (largest change first). A field at its typical value changes nothing: it takes no slot.
  const all = result.reasons;
  const list = $("reasons");
  const note = $("reasons-note");
  list.replaceChildren();
  if (!all) {
    note.textContent = "No reasons for this run.";
    return;
  }
  const raise = all.filter((r) => r.delta > 0);
  const lower = all.filter((r) => r.delta < 0).sort((a, b) => a.delta - b.delta);
  const shown = [...raise, ...lower].slice(0, SHOWN_REASONS);
  for (const reason of shown) list.append(reasonItem(reason));
  const others = shown.length ? "No other field" : "No field";
  note.textContent = shown.length < SHOWN_REASONS
    ? `${others} changes the probability of ${result.grade} when it is set to its typical value.` : "";
}

function reasonItem(reason) {
  // The reason names the field by its English alias; under it, the header the form shows, or for a derived field
  // (not on the form) what it is and the headers it is computed from.
  const column = state.form.columns.find((c) => c.alias === reason.field);
  const derived = (state.form.derived || {})[reason.field];
  const item = el("li", { "data-field": reason.field, "data-delta": String(reason.delta) },
    el("span", { class: "reason-text", text: reason.text }));  // the text says the change
  if (column) {
    item.append(" ", el("span", { class: "source muted", lang: "ko", text: `(${column.name})` }));
  } else if (derived) {
    item.append(el("small", { class: "source muted" }, `${reason.field}: ${derived.text ? derived.text + ", " : ""}` +
      "computed from ", el("span", { lang: "ko", text: derived.from.join(", ") })));
  }
  return item;
}

async function fillExample() {
  try {
    if (!state.run) await loadRun();
  } catch (err) {
    if (!(err instanceof NeedsToken)) $("example-note").textContent = err.message;
    return;
  }
  const rows = state.run.examples;
  const row = rows[state.example++ % rows.length];
  clearProblems();
  for (const col of state.form.columns) {
    const input = state.fields.get(col.name).querySelector("input, select");
    const value = row[col.name] ?? "";
    if (input.tagName === "SELECT" && value !== "" && ![...input.options].some((o) => o.value === value)) {
      input.append(el("option", { value, text: value }));
    }
    input.value = value;
  }
  const id = row[state.form.id.name];
  $("example-note").textContent = `Example ${id ?? ""} (${(state.example - 1) % rows.length + 1} of ${rows.length}) ` +
    "from the run's data.";
}

// --- a file -----------------------------------------------------------------------------------------------------------

function fileProblem(message) {
  $("file-problem").textContent = message;
  show($("file-problem"), Boolean(message));
  if (message) show($("job"), false);
}

async function upload(event) {
  event.preventDefault();
  fileProblem("");
  show($("job-done"), false);
  const file = $("file-input").files[0];
  if (!file) return fileProblem("Choose a CSV or Parquet file first.");
  if (file.size > state.form.max_upload_bytes) {
    return fileProblem(`${file.name} is ${megabytes(file.size)}; this page grades files up to ` +
      `${megabytes(state.form.max_upload_bytes)}. Use \`korllama predict RUN --data FILE\` for a larger file.`);
  }
  const button = $("upload-button");
  button.disabled = true;
  status("Uploading " + file.name + "…", null);
  show($("job"));
  try {
    const query = new URLSearchParams({ name: file.name, proba: $("with-proba").checked });
    const response = await api(`/page/jobs?${query}`, {
      method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
    });
    if (!response.ok) return fileProblem(await detail(response));
    const { id } = await response.json();
    await follow(id);
  } catch (err) {
    if (!(err instanceof NeedsToken)) fileProblem(err.message);
    else show($("job"), false);
  } finally {
    button.disabled = false;
  }
}

function status(text, fraction) {
  $("job-status").textContent = text;
  const bar = $("job-progress");
  if (fraction === null) bar.removeAttribute("value");  // indeterminate: checking the file, waiting
  else bar.value = fraction;
}

async function follow(id) {
  for (;;) {
    const response = await api(`/page/jobs/${id}`);
    if (!response.ok) return fileProblem(await detail(response));
    const job = await response.json();
    if (job.status === "failed") return fileProblem(job.error);
    if (job.status === "done") return finished(job);
    if (job.status === "grading") {
      status(`Grading ${job.name}: ${job.done.toLocaleString("en")} of ${job.total.toLocaleString("en")} rows`,
        job.total ? job.done / job.total : 0);
    } else {
      status(job.status === "queued" ? `${job.name} is waiting for the file before it…`
        : `Checking ${job.name} (every row is validated before any is graded)…`, null);
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

async function finished(job) {
  status(`Graded ${job.name}: ${job.rows.toLocaleString("en")} rows`, 1);
  const response = await api(`/page/jobs/${job.id}/file`);
  if (!response.ok) return fileProblem(await detail(response));
  const link = $("download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(await response.blob());
  link.download = job.name.replace(/\.[^.]*$/, "") + "-graded.csv";
  link.textContent = `Download ${link.download}`;
  $("job-summary").textContent = `${job.rows.toLocaleString("en")} rows graded in ${job.seconds.toFixed(1)} s. ` +
    `Share of rows per ${state.form.label.name}:`;
  const shares = Object.fromEntries(Object.entries(job.counts).map(([k, n]) => [k, n / Math.max(job.rows, 1)]));
  bars($("job-counts"), shares, null);
  $("job-warnings").replaceChildren(...(job.warnings || []).map((w) => el("li", { text: w })));
  show($("job-done"));
  link.focus();
}

// --- start ------------------------------------------------------------------------------------------------------------

async function start() {
  $("token-form").addEventListener("submit", useToken);
  $("applicant").addEventListener("submit", grade);
  $("applicant").addEventListener("reset", () => {
    clearProblems();
    show($("result"), false);
    $("example-note").textContent = "";
    $("result-status").textContent = "";
  });
  $("example-button").addEventListener("click", fillExample);
  $("upload-form").addEventListener("submit", upload);
  state.form = JSON.parse($("form-data").textContent);  // the service writes it into the page
  buildForm(state.form);
  if (state.form.auth && !sessionStorage.getItem(TOKEN_KEY)) {
    askForToken(null);
    $("run-info").replaceChildren(el("p", { class: "muted", text: "The run's details need the service's token." }));
    return;
  }
  try {
    await loadRun();
  } catch (err) {
    if (!(err instanceof NeedsToken)) $("run-info").replaceChildren(el("p", { class: "problem", text: err.message }));
  }
}

document.addEventListener("DOMContentLoaded", start);

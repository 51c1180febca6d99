// The run panel of korllama's grading page: what the service grades with (an LLM run or a tree baseline), read
// from /page/run. Loaded after page.js, whose helpers (el, api, state, …) it uses.
"use strict";

// --- the run ----------------------------------------------------------------------------------------------------------

function fact(list, name, value) {
  if (value === null || value === undefined || value === "") return;
  list.append(el("dt", { text: name }), el("dd", { text: String(value) }));
}

function figure(x, digits = 4) { return typeof x === "number" ? x.toFixed(digits) : x; }

async function loadRun() {
  const response = await api("/page/run");
  if (!response.ok) throw new Error(String(await detail(response)));
  const run = (state.run = await response.json());
  const trees = run.kind === "trees";  // a tree baseline's folder: no base model, prompt or training steps
  $("run-title").textContent = trees ? "The trees" : "The run";
  const facts = el("dl", { class: "facts" });
  fact(facts, trees ? "Folder" : "Run", run.run);
  fact(facts, trees ? "Model" : "Base model", run.base);
  if (!trees) fact(facts, "Provenance", Object.entries(run.provenance).map(([k, v]) => `${k}: ${v}`).join(", "));
  fact(facts, "Tuning", trees ? run.tuning : `${run.tuning}; prompt template ${run.template}`);
  const data = run.data;
  fact(facts, "Data", `${data.source} (spec ${data.spec}${data.rows ? `, ${data.rows.toLocaleString("en")} rows` : ""})` +
    (data.sha256 ? ` sha256 ${data.sha256.slice(0, 12)}…` : ""));
  const split = run.split;
  const rows = (n) => (n === null || n === undefined ? "?" : n.toLocaleString("en"));
  const parts = split.test ? `${percent(split.validation)} validation, ${percent(split.test)} test rows kept aside`
    : `${percent(split.validation)} held out`;
  fact(facts, "Split", `${parts} (seed ${split.seed}): ` + (trees
    ? `fitted on ${rows(split.train_rows)} rows`
    : `${rows(split.train_rows)} training rows; ${rows(split.validation_rows)} validation rows scored during training`));
  const m = run.metrics;
  if (trees) {
    fact(facts, "Held out", m.macro_f1 === null ? "not scored"
      : `macro-F1 ${figure(m.macro_f1)} on the ${split.test ? "test" : "held-out"} rows`);
  } else {
    fact(facts, "Validation", `macro-F1 ${figure(m.macro_f1)} at step ${m.best_step} of ${m.steps}` +
      (m.train_loss !== null && m.train_loss !== undefined ? `; final training loss ${figure(m.train_loss)}` : ""));
  }
  const rule = run.decision.rule;
  let decision = run.decision.served === "argmax" ? "argmax: the most probable label"
    : `${run.decision.served}: argmax of P × weights`;
  if (rule) {
    const whose = trees ? "The trees' rule" : "The run's rule";
    decision += rule.argmax_kept ? `. ${whose} kept argmax (${rule.argmax_kept})`
      : `. ${whose} weights: ${rule.classes.map((c, i) => `${c} ${figure(rule.weights[i], 2)}`).join(", ")} ` +
        `(fitted on ${rule.fitted_rows} validation rows)`;
    if (m.macro_f1_by_decision) {
      decision += `; validation macro-F1 argmax ${figure(m.macro_f1_by_decision.argmax)}, ` +
        `rule ${figure(m.macro_f1_by_decision.decision)}`;
    }
  }
  fact(facts, "Decision", decision);
  $("run-info").replaceChildren(facts);
  // markdown-it on the service, raw HTML off: the card's HTML holds no markup of its own
  if (run.card_html) $("card-html").innerHTML = run.card_html;
  else if (trees) $("card-html").textContent = "A tree baseline has no model card: its figures are above.";
  else $("card-html").textContent = "This run has no model card (write it with korllama's write_model_card).";
  return run;
}

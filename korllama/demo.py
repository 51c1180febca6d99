"""`korllama demo`: the whole loop on the embedded default, so a newcomer sees every stage work once.

synthetic loan table -> check -> prompts -> train the tiny model (configs/demo.yaml) -> evaluate it before and
after tuning on the held-out rows (rank scoring, and the original's generation on a sample) -> the reasons for the
tuned model's grades (korllama.explain) -> the LightGBM baseline on the same split -> one HTML report.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.markup import escape

from korllama.baseline.command import run_baseline
from korllama.bases import ensure_base
from korllama.card import document_run
from korllama.choices import Mode
from korllama.config import load_config
from korllama.data import Table, profile, read_table, split
from korllama.errors import ConfigError
from korllama.evaluate import evaluate_run
from korllama.evaluation import PREDICTIONS_FILE, metrics, write_evaluation
from korllama.explain import explain_run
from korllama.generation import generate, off_format_rate
from korllama.io import write_csv
from korllama.model import pick_device
from korllama.outputs import record_written
from korllama.prompts import answer, get_template
from korllama.report import compare
from korllama.run import Run
from korllama.synth import synthesize
from korllama.training import train
from korllama.training.hardware import threads_for


@dataclass(frozen=True)
class PretrainedStage:
    """The SmolLM2 stage's budget, sized so that `make demo` stays within 5 minutes on a 2-core CPU (measured:
    README "Two commands"). Training is configs/smollm2-lora.yaml (the measured recipe: r 16, alpha 32, dropout 0.1
    on every linear layer of the blocks, lr 2e-3; benchmarks/RESULTS.md section 12; the compact prompt) on the
    demo's table, shortened to `steps`."""

    base: str = "smollm2-135m"
    config: str = "smollm2-lora"
    # LoRA steps of `batch_size` rows. 100, not 60: over train.seed 0-2 (benchmarks/seeds.py, RESULTS.md section 20)
    # 60 steps gave 0.668, 0.624 and 0.321 (one seed did not learn), lr 1e-3 or a longer warm-up did worse; 100 steps
    # hold (see the section), for about 45 s more
    steps: int = 100
    batch_size: int = 16
    lr: float = 2e-3            # configs/smollm2-lora.yaml's lr (tests/test_config.py checks that they agree)
    warmup_steps: int | None = None  # None: a tenth of the steps
    seed: int = 0               # train.seed: data order, dropout, LoRA's initial matrices
    eval_rows: int = 100        # held-out rows scored at the end of training (to keep the best weights)
    score_rows: int = 200       # held-out rows rank-scored before and after tuning
    generate_rows: int = 8      # held-out rows generated for, the original's way (100 new tokens: slow)
    show_texts: int = 2         # generated texts printed, cut to `show_chars`
    show_chars: int = 160


def run_demo(out: Path, rows: int = 4000, seed: int = 0, console: Console | None = None,
             pretrained: PretrainedStage | None = PretrainedStage()) -> dict:
    """Every stage once; `pretrained=None` leaves out the SmolLM2 stage. On a CPU the demo runs on the threads
    korllama.training.hardware.cpu_threads chooses: the cores, whatever else runs (the same demo, the same figures).
    `out` is the demo's own (the CLI claimed it: new, empty, or a demo's): every file in it is listed as korllama's."""
    try:
        with threads_for(pick_device("auto")) as threads:
            result = _run_demo(out, rows, seed, console or Console(), pretrained)
    finally:  # stopped or finished: what it wrote is listed, so `korllama demo --overwrite` may replace it
        if out.is_dir():
            record_written(out)
    return result | {"threads": threads}


def _run_demo(out: Path, rows: int, seed: int, console: Console, pretrained: PretrainedStage | None) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)

    def say(step: str, text: str) -> None:
        console.print(f"[bold]{step:<11}[/] {text}", highlight=False)

    data_path = out / "data.csv"
    write_csv(data_path, synthesize(rows, seed))
    say("1. data", f"synthetic loan table, {rows:,} rows (seed {seed}) -> {escape(str(data_path))}")

    table = read_table(data_path)
    rates = profile(table)["derived_median_by_label"]["implied_rate"]
    say("2. check", "valid; median implied rate by grade: "
        + "  ".join(f"{g} {r:.1%}" for g, r in rates.items() if r is not None))

    config = load_config("demo", [f"data.train={data_path}"])
    template = get_template(table.spec, config.prompt.template, config.prompt.fields)
    say("3. prompts", f"template {template.name!r}; the first row becomes:")
    console.print(template.render(table.subset(table.frame.index[:1]))[0] + answer(table.labels.iloc[0]),
                  markup=False, highlight=False)

    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo's own folder: start clean every time
    say("4. train", f"the tiny Llama built here, all weights, {config.train.epochs:g} epochs -> {run_dir}")
    summary = train(config, run_dir, table=table)  # the table read above: not read again
    tuned = Run.load(run_dir, table=table)
    document_run(tuned)

    evals = out / "eval"
    before = evaluate_run(Run.load(run_dir, base=str(run_dir / "base"), table=table), table, evals / "before",
                          held_out=True, system="tiny before tuning", console=console)
    after = evaluate_run(tuned, table, evals / "after", held_out=True, system="tiny after tuning", console=console)
    generated = evaluate_run(tuned, table, evals / "generate", mode="generate", limit=100, held_out=True,
                             batch_size=16, system="tiny after tuning, generation", console=console)
    say("5. evaluate", f"held-out rows: macro-F1 {before.macro_f1:.3f} before tuning -> "
        f"{after.macro_f1:.3f} after (rank scoring, {after.rows_per_s:.0f} rows/s); generation the "
        f"original's way: {generated.macro_f1:.3f} on {generated.n} rows, "
        f"{generated.invalid_rate:.0%} invalid, {generated.rows_per_s:.1f} rows/s")
    reasons, why = explain_run(tuned, table, evals / "after", held_out=True, console=console)
    say("   reasons", f"each prompt field set to a typical value, the row scored again ({why['rows_per_s']:.0f} "
        f"rows/s); row {escape(reasons.ids[0])} is {reasons.classes[reasons.predicted[0]]}: "
        + "; ".join(escape(r["text"]) for r in reasons.top(0, 2)))
    base = run_baseline(table, None, evals / "baseline", valid_fraction=config.data.valid_fraction,
                        test_fraction=config.data.test_fraction, seed=config.data.split_seed)
    say("6. baseline", f"LightGBM on the same split: macro-F1 {base.macro_f1:.3f}")

    folders = [evals / "before", evals / "after", evals / "generate", evals / "baseline"]
    smol = None
    if pretrained is not None:
        smol = pretrained_stage(pretrained, table, data_path, out, say, console)
        folders += smol["folders"] if smol else []

    report = out / "report.html"
    title = "korllama demo: synthetic loan table, tiny model" + (" and SmolLM2-135M + LoRA" if smol else "")
    compare(folders, report, title=title, allow_different_rows=True)  # generation: a sample of the rows
    seconds = time.perf_counter() - started
    say("9. report" if pretrained is not None else "7. report",
        f"{escape(str(report))} (one file, its plots embedded)")
    console.print(f"\ndone in {seconds:.0f}s ({torch.get_num_threads()} CPU threads). Open {escape(str(report))} in "
                  "a browser.")
    return {"seconds": seconds, "before": before.macro_f1, "after": after.macro_f1,
            "baseline": base.macro_f1, "train": summary,
            "pretrained": {k: v for k, v in smol.items() if k != "folders"} if smol else None}


def stage_config(stage: PretrainedStage, data_path: Path, overrides: tuple[str, ...] = ()):
    """The SmolLM2 stage's training config: `stage.config` on the demo's table and prompt fields, shortened to the
    stage's steps (benchmarks/demo_seeds.py trains the same, over seeds)."""
    # the demo's own prompt fields: the synthetic table's rates are continuous, so the real table's choice (the
    # term and the schedule rate, which repeat there) is no help here (benchmarks/RESULTS.md section 16)
    fields = ",".join(load_config("demo").prompt.fields)
    return load_config(stage.config, [
        f"data.train={data_path}", f"prompt.fields=[{fields}]", f"train.max_steps={stage.steps}",
        f"train.batch_size={stage.batch_size}", f"train.lr={stage.lr}",
        f"train.warmup_steps={stage.warmup_steps if stage.warmup_steps is not None else max(1, stage.steps // 10)}",
        f"train.eval_steps={stage.steps}", f"train.save_steps={stage.steps}", f"train.eval_rows={stage.eval_rows}",
        "train.logging_steps=10", f"train.seed={stage.seed}", *overrides])


def pretrained_stage(stage: PretrainedStage, table: Table, data_path: Path, out: Path, say, console) -> dict | None:
    """The original's story on SmolLM2: generation before tuning (the seed prompt, the original's sampling), a
    short LoRA tuning, rank scoring before/after and the same generation after, each an evaluation folder for the
    report. None, after one sentence saying how to install the base, when its package is missing."""
    first = time.perf_counter()
    try:
        ensure_base(stage.base, log=lambda message: say("7. base", escape(message.removeprefix("korllama: "))))
    except ConfigError as exc:  # the package (or the GGUF reader) is not installed: the tiny stages stand alone
        say("7. base", f"skipped: {escape(str(exc))}")
        return None
    say("7. base", f"{stage.base} ready in the korllama cache ({time.perf_counter() - first:.0f} s)")

    config = stage_config(stage, data_path)
    spec, classes = table.spec, table.spec.label.classes
    data = config.data
    held_out = split(table, data.valid_fraction, data.split_seed, data.test_fraction).held_out  # as Run.split
    # the rows evaluate_run(limit=...) picks from the same held-out split, so before and after see the same rows
    sample = held_out.sample(stage.generate_rows, seed=0)
    evals = out / "eval"
    smol_run = out / "smollm2-run"
    shutil.rmtree(smol_run, ignore_errors=True)

    untuned = Run.load(base=stage.base)
    model, tokenizer = untuned.model, untuned.tokenizer
    seed_template = get_template(spec, "seed")
    started = time.perf_counter()
    pred, texts = generate(model, tokenizer, seed_template.render(sample), classes, batch_size=stage.generate_rows)
    seconds = time.perf_counter() - started
    del model, untuned
    result = metrics(sample.labels.tolist(), pred, classes, None, spec.label.ordinal)
    result.system, result.mode, result.template = "SmolLM2 before tuning, generation (seed prompt)", Mode.GENERATE, \
        "seed"
    result.rows_per_s, result.seconds, result.data, result.held_out = len(sample) / max(seconds, 1e-9), seconds, \
        table.source, True
    result.run, result.base, result.off_format_rate = None, stage.base, off_format_rate(texts, classes)
    write_evaluation(evals / "smollm2-generate-before", result, sample.ids, sample.labels, pred, None, classes,
                     {"generated": texts})
    say("8. SmolLM2", f"before tuning, the original's prompt (seed) and sampling, 100 new tokens, on "
        f"{len(sample)} held-out rows: {result.invalid_rate:.0%} without a valid grade, "
        f"{result.off_format_rate:.0%} not just a grade (extra text), macro-F1 "
        f"{result.macro_f1:.3f}, {result.rows_per_s:.2f} rows/s. It wrote, e.g.:")
    for text in _shown(texts, pred, classes, stage):
        console.print(text, markup=False, highlight=False)

    say("", f"LoRA (r {config.lora.r}, alpha {config.lora.alpha:g}, dropout {config.lora.dropout:g} on "
        f"{'+'.join(config.lora.target_modules)}), {stage.steps} steps of {stage.batch_size} rows, prompt "
        f"{config.prompt.template!r} -> {escape(str(smol_run))}")
    summary = train(config, smol_run, table=table)
    tuned = Run.load(smol_run, table=table)
    # its curve for the report, not its card: the card's re-scoring and reasons cost SmolLM2 ~17 s, and `make demo`
    # keeps within 5 minutes on a fresh clone (the demo's tiny run has its card; `korllama train` always writes one)
    document_run(tuned, card=False)
    before = evaluate_run(Run.load(smol_run, base=stage.base, table=table), table, evals / "smollm2-before",
                          held_out=True, limit=stage.score_rows, system="SmolLM2 before tuning", console=console)
    after = evaluate_run(tuned, table, evals / "smollm2-after", held_out=True, limit=stage.score_rows,
                         system="SmolLM2 after LoRA", console=console)
    generated = evaluate_run(tuned, table, evals / "smollm2-generate-after", mode="generate",
                             limit=stage.generate_rows, held_out=True, batch_size=stage.generate_rows,
                             system="SmolLM2 after LoRA, generation", console=console)
    after_texts = _read_generated(evals / "smollm2-generate-after")
    say("", f"after tuning, the same sampling ({config.prompt.template!r} prompt) on the same rows: "
        f"{generated.invalid_rate:.0%} without a valid grade, {generated.off_format_rate:.0%} not just a "
        f"grade, e.g. {escape(repr(after_texts[0]))}; "
        f"rank scoring on {after.n} held-out rows: macro-F1 {before.macro_f1:.3f} before tuning -> "
        f"{after.macro_f1:.3f} after ({after.rows_per_s:.0f} rows/s)")
    return {"folders": [evals / "smollm2-generate-before", evals / "smollm2-before", evals / "smollm2-after",
                        evals / "smollm2-generate-after"],
            "generate_before": result, "before": before.macro_f1, "after": after.macro_f1,
            "generate_after": generated, "train": summary, "texts_before": texts, "texts_after": after_texts}


def _shown(texts: list[str], pred: list, classes: list[str], stage: PretrainedStage) -> list[str]:
    """A few generated texts, the invalid ones first, then those with more than a grade, cut to a readable length
    (line breaks shown as ⏎)."""
    order = sorted(range(len(texts)), key=lambda i: (pred[i] is not None, texts[i].strip() in classes))
    shown = []
    for i in order[:stage.show_texts]:
        text = texts[i].strip().replace("\n", " ⏎ ")
        cut = text[:stage.show_chars] + (" ..." if len(text) > stage.show_chars else "")
        shown.append(f"  [{i + 1}] {cut!r}  -> parsed: {pred[i] or 'no valid grade'}")
    return shown


def _read_generated(folder: Path) -> list[str]:
    return pd.read_csv(folder / PREDICTIONS_FILE, keep_default_na=False)["generated"].astype(str).tolist()

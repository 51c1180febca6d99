"""`korllama demo`: the whole loop on the embedded default, so a newcomer sees every stage work once.

synthetic loan table -> check -> prompts -> train the tiny model (configs/demo.yaml) -> evaluate it before and
after tuning on the held-out rows (rank scoring, and the original's generation on a sample) -> the reasons for the
tuned model's grades (korllama.explain) -> the LightGBM baseline on the same split -> one HTML report.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from korllama.config import load_config
from korllama.data import profile, read_table
from korllama.evaluate import evaluate_run, run_baseline
from korllama.explain import explain_run
from korllama.io import write_csv
from korllama.prompts import answer, get_template
from korllama.report import compare
from korllama.synth import synthesize
from korllama.train import train


def run_demo(out: Path, rows: int = 4000, seed: int = 0, console: Console | None = None) -> dict:
    console = console or Console()
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

    evals = out / "eval"
    before = evaluate_run(run_dir, table, evals / "before", base=str(run_dir / "base"), held_out=True,
                          system="before tuning", console=console)
    after = evaluate_run(run_dir, table, evals / "after", held_out=True, system="after tuning", console=console)
    generated = evaluate_run(run_dir, table, evals / "generate", mode="generate", limit=100, held_out=True,
                             batch_size=16, system="after tuning, generation", console=console)
    say("5. evaluate", f"held-out rows: macro-F1 {before['macro_f1']:.3f} before tuning -> "
        f"{after['macro_f1']:.3f} after (rank scoring, {after['rows_per_s']:.0f} rows/s); generation the "
        f"original's way: {generated['macro_f1']:.3f} on {generated['n']} rows, "
        f"{generated['invalid_rate']:.0%} invalid, {generated['rows_per_s']:.1f} rows/s")
    reasons, why = explain_run(run_dir, table, evals / "after", held_out=True, console=console)
    say("   reasons", f"each prompt field set to a typical value, the row scored again ({why['rows_per_s']:.0f} "
        f"rows/s); row {escape(reasons.ids[0])} is {reasons.classes[reasons.predicted[0]]}: "
        + "; ".join(escape(r["text"]) for r in reasons.top(0, 2)))
    base = run_baseline(table, None, evals / "baseline", valid_fraction=config.data.valid_fraction,
                        seed=config.data.split_seed)
    say("6. baseline", f"LightGBM on the same split: macro-F1 {base['macro_f1']:.3f}")

    report = out / "report.html"
    compare([evals / "before", evals / "after", evals / "generate", evals / "baseline"], report,
            title="korllama demo: synthetic loan table, tiny model", allow_different_rows=True)  # generation: a sample
    seconds = time.perf_counter() - started
    say("7. report", f"{escape(str(report))} (plots in {escape(str(report.with_suffix('')))}/)")
    console.print(f"\ndone in {seconds:.0f}s. Open {escape(str(report))} in a browser.")
    return {"seconds": seconds, "before": before["macro_f1"], "after": after["macro_f1"],
            "baseline": base["macro_f1"], "train": summary}

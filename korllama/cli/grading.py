"""`korllama predict`, `evaluate`, `baseline`, `explain`, `compare`: grades and how good they are."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from korllama.choices import Decision, Mode
from korllama.cli.app import (
    AllowUnfinishedOption,
    AllowUnrecordedOption,
    BaseOption,
    ChunkOption,
    DecisionOption,
    OverwriteOption,
    RunArg,
    SpecOption,
    app,
    console,
    err_console,
    figures,
)
from korllama.defaults import BATCH_SIZE, SPLIT_SEED, TEST_FRACTION, VALID_FRACTION


@app.command("predict")
def predict_cmd(
    run: RunArg = None,
    data: Annotated[Path, typer.Option("--data", help="Table to grade (labelled or not).")] = ...,
    out: Annotated[Path, typer.Option("--out", help="Submission CSV to write.")] = Path("submission.csv"),
    proba: Annotated[bool, typer.Option("--proba", help="Add P_A..P_G columns.")] = False,
    base: BaseOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = BATCH_SIZE,
    chunk_rows: ChunkOption = None,
    decision: DecisionOption = Decision.ARGMAX,
    overwrite: OverwriteOption = False,
    allow_unfinished: AllowUnfinishedOption = False,
    allow_unrecorded: AllowUnrecordedOption = False,
):
    """Grade every row (rank scoring) and write the competition's submission format: ID,대출등급, input order.

    The table streams: read, scored and written --chunk-rows rows at a time into a temporary file that becomes
    --out only when every row is done (an error or Ctrl-C leaves nothing).

    Under accelerate launch the rows are split between the processes (one per GPU) and the main process writes them
    in input order.

    Examples:
      korllama predict runs/dacon-tiny --data ../shared/data/dacon-loan/test.csv --out submission.csv
      accelerate launch --num_processes 8 -m korllama predict runs/big --data big.csv --out graded.csv
    """
    from korllama.outputs import claim_file

    claim_file(out, overwrite, inputs=(data,))  # before torch is even imported
    from korllama.predict import predict_file
    from korllama.system import load_system

    loaded = load_system(run, base, allow_unfinished=allow_unfinished, allow_unrecorded=allow_unrecorded)
    result = predict_file(loaded, data, out, proba, batch_size, console=err_console, chunk_rows=chunk_rows,
                          decision=decision)
    if not result:  # another process of `accelerate launch`: the main process writes the file and reports
        return
    shares = "  ".join(f"{k} {v / result['rows']:.1%}" for k, v in result["counts"].items())
    console.print(f"wrote {escape(result['out'])}: {result['rows']:,} rows ({shares})")


@app.command("evaluate")
def evaluate_cmd(
    run: RunArg = None,
    data: Annotated[Path, typer.Option("--data", help="Labelled table.")] = ...,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and predictions.csv: new or empty "
                                                    "(an evaluation is replaced with --overwrite, its folder's "
                                                    "explanation with it).")] = ...,
    mode: Annotated[Mode, typer.Option("--mode", help="score: the system's own way (rank scoring for a run, the "
                                                      "trees' probabilities for a baseline; default), or generate "
                                                      "(a run: the original's sampling + parsing).")] = Mode.SCORE,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Score a seeded sample of N rows.")] = None,
    held_out: Annotated[bool, typer.Option("--held-out", help="Only the system's test rows of --data: never trained "
                                                              "on, and no choice (checkpoint, decision rule) was made "
                                                              "on them (a run split without test rows: its "
                                                              "validation rows).")] = False,
    base: BaseOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = BATCH_SIZE,
    name: Annotated[str | None, typer.Option("--name", help="System name in reports (default: the run's).")] = None,
    chunk_rows: ChunkOption = None,
    decision: DecisionOption = Decision.ARGMAX,
    overwrite: OverwriteOption = False,
    allow_unfinished: AllowUnfinishedOption = False,
    allow_unrecorded: AllowUnrecordedOption = False,
):
    """Score a run (or a base model) on labelled rows: macro-F1, accuracy, QWK, per-grade figures, confusion.

    Examples:
      korllama evaluate runs/dacon-tiny --data ../shared/data/dacon-loan/train.csv --held-out --out runs/eval/tuned
      korllama evaluate runs/dacon-tiny --base runs/dacon-tiny/base --data ... --held-out --out runs/eval/before
      korllama evaluate runs/dacon-tiny --data ... --held-out --mode generate --limit 200 --out runs/eval/generate
      accelerate launch --num_processes 8 -m korllama evaluate runs/big --data big.csv --out runs/eval/big
    """
    from korllama.evaluation import claim_evaluation

    claim_evaluation(out, overwrite)
    from korllama.evaluate import evaluate_run
    from korllama.system import load_system

    loaded = load_system(run, base, allow_unfinished=allow_unfinished, allow_unrecorded=allow_unrecorded)
    r = evaluate_run(loaded, data, out, mode=mode, limit=limit, held_out=held_out,
                     batch_size=batch_size, system=name, console=err_console, chunk_rows=chunk_rows, decision=decision)
    if not r:  # another process of `accelerate launch`: the main process writes and reports
        return
    extra = f", invalid answers {r.invalid_rate:.1%}" if mode == "generate" else ""
    console.print(f"{escape(r.system)}: {figures(r)} ({r.rows_per_s:.1f} rows/s{extra}) -> {escape(str(out))}")
    if r.decision is not None:
        d = r.decision
        if not d.rows:
            console.print(f"decision rule: all {r.n:,} scored rows are rows it was fitted on, so none is left to "
                          "judge it (metrics.json's decision.rows is 0); score other rows to compare it with argmax")
        else:
            console.print(f"decision rule, on the {d.rows:,} rows it was not fitted on: argmax "
                          f"{d.argmax.macro_f1:.4f} -> rule {d.rule.macro_f1:.4f} "
                          f"(--decision {r.decision_rule} chose the predictions)")


@app.command("baseline")
def baseline_cmd(
    train_file: Annotated[Path, typer.Option("--train", help="Labelled table to fit on.")] = ...,
    eval_file: Annotated[Path | None, typer.Option("--eval", help="Labelled table to score (default: the "
                                                                  "held-out split of --train).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, predictions.csv and decision.json: "
                                                    "new or empty (an evaluation: --overwrite).")] = ...,
    spec: SpecOption = None,
    config_file: Annotated[str | None, typer.Option(
        "--config", help="A run's config.yaml (or a built-in config name): its data.valid_fraction, "
                         "data.test_fraction, data.split_seed "
                         "and data.spec give the split, so the trees see that run's held-out rows.")] = None,
    valid_fraction: Annotated[float | None, typer.Option(
        "--valid-fraction", min=0.01, max=0.99,
        help=f"Share of validation rows without --eval (the trees make no choice on them). "
             f"[default: {VALID_FRACTION}]")] = None,
    test_fraction: Annotated[float | None, typer.Option(
        "--test-fraction", min=0, max=0.99,
        help=f"Share of test rows without --eval: the trees are scored on them (0: on the validation rows). "
             f"[default: {TEST_FRACTION}]")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help=f"Split seed without --eval. [default: {SPLIT_SEED}]")] = None,
    decision: Annotated[Decision, typer.Option(
        "--decision", help="argmax: the most probable label. macro-f1: the decision rule (per-label weights fitted "
                           "on the trees' inner validation rows, stored as OUT/decision.json). metrics.json holds "
                           "both either way.")] = Decision.ARGMAX,
    budget: Annotated[float | None, typer.Option(
        "--budget", min=0, help="Seconds for the parameter search: settings are tried until the next would not fit "
                                "(the first always runs). Default: no budget, every setting is tried, so the same "
                                "command gives the same trees on a busy machine or a quiet one.")] = None,
    overwrite: OverwriteOption = False,
):
    """Gradient-boosted trees (LightGBM) on the cleaned columns plus the derived features, same metrics.

    Without --eval it splits --train as `korllama train` does with the default config (pass --config
    RUN/config.yaml for a run's own split): it fits on the training rows (70%) and scores the test rows (10%), which
    no system makes a choice on; the validation rows (20%) are where a run chooses its checkpoint and decision rule,
    and the trees do not use them.

    The trees stop early on an inner 10% of the fitting rows. A few settings are tried (all, or those that fit
    --budget), each printed, and the best on those inner rows is kept, then refitted on all the fitting rows with
    the rounds it stopped at.

    The folder keeps the tuned trees: `korllama predict`, `evaluate`, `explain` and `serve` take it as they take a
    run.

    Example:
      korllama baseline --train ../shared/data/dacon-loan/train.csv --out runs/eval/baseline
    """
    from korllama.evaluation import claim_evaluation
    from korllama.layout import RunDir, TreesDir

    claim_evaluation(out, overwrite, keeps=TreesDir.OWN)
    from korllama.baseline.command import run_baseline
    from korllama.config import load_config

    # the defaults when no config is named: one source for the split; a run's own config.yaml as the run reads it
    saved = config_file is not None and Path(config_file).name == "config.yaml" and \
        RunDir(Path(config_file).parent).trained_into
    data = load_config(config_file, saved=saved).data
    r = run_baseline(train_file, eval_file, out, spec or data.spec,
                     data.valid_fraction if valid_fraction is None else valid_fraction,
                     data.split_seed if seed is None else seed, decision=decision, budget_s=budget,
                     console=err_console, test_fraction=data.test_fraction if test_fraction is None else test_fraction)
    a, d = r.decision.argmax, r.decision.rule
    console.print(f"baseline: {figures(r)} (fit {r.fit_seconds:.0f}s) -> {escape(str(out))}")
    console.print(f"  argmax: macro-F1 {a.macro_f1:.4f}, accuracy {a.accuracy:.4f}; with the decision rule: "
                  f"macro-F1 {d.macro_f1:.4f}, accuracy {d.accuracy:.4f} (--decision {decision})")


@app.command("explain")
def explain_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory made by `korllama train`, or the trees' folder made by "
                                             "`korllama baseline`.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="Table whose rows to explain (labelled or not).")] = ...,
    out: Annotated[Path, typer.Option("--out", help="Folder for reasons.csv and explain.json: new, or the same "
                                                    "system's evaluation folder (`korllama compare` then shows the "
                                                    "importance).")] = ...,
    ids: Annotated[list[str] | None, typer.Option("--id", help="Explain this row (repeat for more); default: "
                                                               "every row.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Reasons printed per row.")] = 3,
    held_out: Annotated[bool, typer.Option("--held-out", help="Only the system's held-out rows of --data (as "
                                                              "`evaluate --held-out`).")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="A seeded sample of N rows (the rows "
                                                                     "`evaluate --limit N` scores).")] = None,
    baseline: Annotated[bool, typer.Option("--baseline", hidden=True)] = False,
    show: Annotated[int, typer.Option("--show", min=0, help="Rows printed in words (all of them with --id).")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = BATCH_SIZE,
    overwrite: OverwriteOption = False,
    allow_unfinished: AllowUnfinishedOption = False,
    allow_unrecorded: AllowUnrecordedOption = False,
):
    """Why each row got its grade: every field the prompt carries is set to a typical value in turn and the row is
    scored again; the reason is the change in the probability of the predicted grade.

    Writes OUT/reasons.csv (id, label, probability, rank, field, value, reference, delta, delta_<label>...) and
    prints the top reasons per row, e.g. "implied_rate 18.91% (typical 11.57%) raises E by 0.41".

    Examples:
      korllama explain runs/demo/run --data runs/demo/data.csv --id SYN_00007 --top 3 --out /tmp/why
      korllama explain runs/dacon-tiny --data train.csv --held-out --limit 1000 --out runs/eval/tuned
      korllama explain runs/eval/baseline --data ... --held-out --limit 1000 --out runs/eval/baseline
    """
    from korllama.errors import KorllamaError
    from korllama.evaluation import REASONS_FILE, claim_explanation
    from korllama.layout import TreesDir
    from korllama.system import is_trees

    if baseline:
        raise KorllamaError("--baseline is gone: it explained fresh, untuned trees. Fit the tuned trees with "
                            "`korllama baseline --train FILE --out TREES` and explain them: `korllama explain TREES "
                            "--data ...`.")
    claim_explanation(out, overwrite, run, is_trees(run), keeps=TreesDir.OWN)
    from korllama.explain import explain_run
    from korllama.system import load_system

    explained = load_system(run, allow_unfinished=allow_unfinished, allow_unrecorded=allow_unrecorded)
    reasons, summary = explain_run(explained, data, out, ids=ids, held_out=held_out, limit=limit,
                                   batch_size=batch_size, console=err_console)
    shown = len(reasons) if ids else min(show, len(reasons))
    for i in range(shown):
        label = reasons.classes[reasons.predicted[i]]
        console.print(f"[bold]{escape(reasons.ids[i])}[/]: {escape(label)} "
                      f"(P {reasons.proba[i, reasons.predicted[i]]:.2f})", highlight=False)
        for r in reasons.top(i, top):
            console.print(f"  {escape(r['text'])}", highlight=False)
    more = f" ({len(reasons) - shown:,} more rows in {REASONS_FILE})" if shown < len(reasons) else ""
    console.print(f"{escape(summary['system'])}: {len(reasons):,} rows x {len(summary['fields'])} fields explained "
                  f"in {summary['seconds']:.1f}s ({summary['rows_per_s']:.1f} rows/s){more} -> "
                  f"{escape(str(Path(out) / REASONS_FILE))}", highlight=False)


@app.command("compare")
def compare_cmd(
    folders: Annotated[list[Path], typer.Argument(help="Evaluation folders (each with metrics.json).")],
    out: Annotated[Path, typer.Option("--out", help="HTML report to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option("--title")] = "korllama report",
    allow_different_rows: Annotated[bool, typer.Option(
        "--allow-different-rows", help="Compare evaluations scored on different rows (the report then says so, "
                                       "with each system's row count).")] = False,
    overwrite: OverwriteOption = False,
):
    """Write one self-contained HTML report comparing evaluations, its plots embedded (no other file is written).

    The report opens with a verdict: the best system on the shared rows, its lead with a paired bootstrap 95%
    interval, what each system costs to train and how fast it grades. Then a table of figures, confusion matrices,
    F1 per grade, reliability and the training curves, each figure for systems scored on the same rows.

    The systems must have been scored on the same rows (the IDs in each predictions.csv), unless
    --allow-different-rows: systems on other rows are then listed apart from the verdict.

    Example:
      korllama compare runs/eval/before runs/eval/tuned runs/eval/baseline --out report.html
    """
    from korllama.outputs import claim_file

    claim_file(out, overwrite)
    from korllama.report import compare

    r = compare(folders, out, title, allow_different_rows=allow_different_rows)
    console.print(f"wrote {escape(str(out))}: " + ", ".join(f"{s} {f:.4f}" for s, f in r["systems"]))

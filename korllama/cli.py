"""The `korllama` command: one subcommand per pipeline stage, plus `demo`.

Errors in the user's input are one red sentence and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from korllama import __version__
from korllama.errors import KorllamaError
from korllama.io import written


def _console(stderr: bool = False) -> Console:
    """A terminal gets rich's wrapping at its width; a file or a pipe gets whole lines (no 80-column wrap that
    splits paths and numbers)."""
    terminal = Console(stderr=stderr)
    if terminal.is_terminal:
        return terminal
    return Console(stderr=stderr, soft_wrap=True, width=10_000)


console = _console()
err_console = _console(stderr=True)

app = typer.Typer(
    help="Teach a language model to grade credit: data -> prompts -> model -> train -> predict -> evaluate.",
    no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Check a table against its spec, or make a synthetic loan table.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SpecOption = Annotated[str | None, typer.Option(
    "--schema", help="Table spec: built-in 'loan' (default) or a YAML spec file (see examples/students).")]


def _print_version(value: bool) -> None:
    if value:  # eager: runs before click asks for a command
        console.print(f"korllama {__version__}")
        raise typer.Exit()


_options = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    _options["debug"] = debug  # main() reads it when a command fails


@data_app.command("check")
def data_check(
    file: Annotated[Path, typer.Argument(help="CSV (utf-8, utf-8 with BOM or cp949) or Parquet file.")],
    schema: SpecOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON.")] = False,
):
    """Validate FILE against the table spec and print its profile: rows, columns, grades, warnings.

    Example: korllama data check ../shared/data/dacon-loan/train.csv
    """
    from korllama.data import profile, read_table

    table = read_table(file, schema)
    prof = profile(table)
    if as_json:
        console.print_json(json.dumps(prof, ensure_ascii=False))
        return
    _print_profile(prof)


def _print_profile(prof: dict) -> None:
    console.print(f"[bold]{escape(prof['source'])}[/]: {prof['rows']:,} rows, valid for spec [cyan]{prof['spec']}[/]")
    cols = RichTable("column", "header", "missing", "summary", box=None, header_style="bold")
    for c in prof["columns"]:
        summary = c.get("summary") or "  ".join(f"{k} {_num(c[k])}" for k in ("min", "median", "max"))
        cols.add_row(c["column"], c["header"], f"{c['missing']:,}" if c["missing"] else "", summary)
    console.print(cols)
    if "labels" in prof:
        total = sum(prof["labels"].values())
        labels = RichTable("label", "rows", "share", *prof["derived_median_by_label"], box=None,
                           header_style="bold", title="by label (median of derived features)", title_justify="left")
        for label, n in prof["labels"].items():
            medians = [prof["derived_median_by_label"][d][label] for d in prof["derived_median_by_label"]]
            labels.add_row(label, f"{n:,}", f"{n / total:.1%}", *["" if m is None else f"{m:.4g}" for m in medians])
        console.print(labels)
    else:
        console.print("no label column: an unlabelled table (fine for predict)")
    # the table's warnings were already shown on stderr as they happened (see _show_warning)


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Where to write the CSV.")],
    rows: Annotated[int, typer.Option("--rows", min=1, help="Number of rows.")] = 4000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same table.")] = 0,
):
    """Write a synthetic loan table with the real headers, raw formats and grade structure.

    Example: korllama data synth --rows 4000 --seed 0 --out synthetic.csv
    """
    from korllama.io import check_out_file, write_csv
    from korllama.synth import synthesize

    check_out_file(out)
    frame = synthesize(rows, seed)
    try:
        write_csv(out, frame)
    except OSError as exc:  # --out is a folder, or under a file, or not writable: a user error, not a bug
        raise KorllamaError(f"Could not write {out}: {exc.strerror or exc}.") from None
    console.print(f"wrote {escape(str(out))} ({len(frame):,} rows, seed {seed})")


@app.command("templates")
def list_templates(schema: SpecOption = None):
    """List the prompt templates available for a table spec."""
    from korllama.prompts import templates
    from korllama.schema import load_spec

    for name, t in templates(load_spec(schema)).items():
        console.print(f"[cyan]{name:12}[/] {t.about}")


@app.command("prompt")
def prompt(
    file: Annotated[Path, typer.Argument(help="The table to read the row from.")],
    row_id: Annotated[str, typer.Option("--id", help="The row's ID (e.g. TEST_00000).")],
    template: Annotated[str, typer.Option("--template", "-t", help="seed, seed-clear, ko or compact.")] = "compact",
    schema: SpecOption = None,
):
    """Print the prompt one row becomes (and its answer, when the table is labelled).

    Example: korllama prompt ../shared/data/dacon-loan/test.csv --id TEST_00000 --template seed
    """
    from korllama.data import read_table
    from korllama.prompts import answer, get_template

    table = read_table(file, schema)
    template_ = get_template(table.spec, template)
    hits = table.ids[table.ids == row_id].index
    if len(hits) == 0:
        raise KorllamaError(f"{file.name} has no row with ID {row_id!r} (IDs look like {table.ids.iloc[0]!r}).")
    row = table.subset(hits)
    text = template_.render(row)[0]
    sys.stdout.write(text + (answer(row.labels.iloc[0]) if row.has_labels else "") + "\n")


ConfigArg = Annotated[Path, typer.Option("--config", "-c", help="Run config YAML (configs/demo.yaml, "
                                                               "configs/seed.yaml, ...).")]
OverridesArg = Annotated[list[str] | None, typer.Argument(
    help="Config overrides as section.key=value, e.g. train.epochs=1 model.base=./my-llama", show_default=False)]


@app.command("train")
def train_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config YAML or a built-in name (demo, "
                                                "dacon-tiny, seed, ...). With --resume: the run's own config.yaml "
                                                "is used, and this may only repeat it.")] = None,
    overrides: OverridesArg = None,
    data: Annotated[Path | None, typer.Option("--data", help="Labelled table to train on (sets data.train).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<config name>); must be new "
                                                           "or empty.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its newest complete "
                                                          "checkpoint, with its own config.yaml.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the korllama run in --out (a folder of "
                                                                "other files is never replaced).")] = False,
):
    """Instruction-tune a model on a graded table (answer-only loss, verified checkpoints, best macro-F1 kept).

    Examples:
      korllama train --config configs/demo.yaml
      korllama train --config configs/dacon-tiny.yaml --data ../shared/data/dacon-loan/train.csv
      korllama train --out runs/demo-train --resume
      accelerate launch --num_processes 2 --cpu -m korllama train --config configs/demo.yaml
    """
    from korllama.config import load_config
    from korllama.train import train

    if resume and overwrite:
        raise KorllamaError("--resume continues a run and --overwrite replaces it: choose one.")
    extra = list(overrides or []) + ([f"data.train={data}"] if data else [])
    cfg = load_config(config, extra) if config is not None or extra else None
    if cfg is None and not resume:
        raise KorllamaError("train needs --config: a YAML file or a built-in name (e.g. --config demo).")
    if out is None and cfg is None:
        raise KorllamaError("--resume needs --out: the run directory to continue.")
    run_dir = out or Path("runs") / cfg.name
    summary = train(cfg, run_dir, resume=resume, overwrite=overwrite)
    if summary:
        console.print(f"trained {summary['global_step']} steps in {summary['seconds']:.0f}s; best validation "
                      f"macro-F1 {summary['best_eval_macro_f1']:.4f} (step {summary['best_step']}) -> "
                      f"{escape(str(run_dir / summary['weights']))}")


@app.command("lora-info")
def lora_info(
    config: ConfigArg,
    overrides: OverridesArg = None,
):
    """Count trainable and total parameters of the configured model with LoRA, without weights or download.

    Builds the architecture on the meta device from model.architecture (a config.json, or a built-in name such as
    llama-2-ko-7b) and prints the original project's line, e.g.
    Trainable: 4194304 | total: 6860050432 | Percentage: 0.0611%
    """
    from korllama.config import load_config
    from korllama.model import format_parameter_report, parameter_report, skeleton, wrap_lora

    cfg = load_config(config, overrides)
    model = skeleton(_architecture(cfg.model))
    if cfg.lora is not None:
        model = wrap_lora(model, cfg.lora)
    sys.stdout.write(format_parameter_report(*parameter_report(model)) + "\n")


def _architecture(model_cfg) -> str:
    """What lora-info builds: model.architecture when set, else the base's own config.json (a named base or a local
    folder); a base with no config to read here is one sentence saying what to set."""
    from korllama.bases import NAMED_BASES, resolve_base
    from korllama.model import BUILTIN_ARCHITECTURES

    if model_cfg.architecture is not None:
        return model_cfg.architecture
    base = model_cfg.base
    if base in NAMED_BASES or Path(base).expanduser().is_dir():
        return resolve_base(base)
    what = ("'tiny', built at training time from the data" if base == "tiny"
            else f"{base!r}, not a local model folder (lora-info reads no hub)")
    raise KorllamaError(f"lora-info counts parameters from a model's config, but model.base is {what}; set "
                        f"model.base to a named base ({', '.join(NAMED_BASES)}) or a local model folder, or "
                        f"model.architecture to a config.json or a built-in name ({', '.join(BUILTIN_ARCHITECTURES)}).")


RunArg = Annotated[Path | None, typer.Argument(help="A run directory made by `korllama train`.", show_default=False)]
BaseOption = Annotated[str | None, typer.Option(
    "--base", help="Score a bare base model instead (a folder or hub id): the 'before tuning' figures. With a "
                   "run, the run's prompt settings are used.")]


DecisionOption = Annotated[str, typer.Option(
    "--decision", help="argmax: the most probable label. macro-f1: the run's decision rule, fitted on its validation "
                       "rows at training, which weighs rare labels up for a higher macro-F1 (the competition's "
                       "metric).")]

ChunkOption = Annotated[int | None, typer.Option(
    "--chunk-rows", min=1, help="Rows read, scored and written at a time (default 10,000): memory follows it, "
                                "not the table.")]


@app.command("predict")
def predict_cmd(
    run: RunArg = None,
    data: Annotated[Path, typer.Option("--data", help="Table to grade (labelled or not).")] = ...,
    out: Annotated[Path, typer.Option("--out", help="Submission CSV to write.")] = Path("submission.csv"),
    proba: Annotated[bool, typer.Option("--proba", help="Add P_A..P_G columns.")] = False,
    base: BaseOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    chunk_rows: ChunkOption = None,
    decision: DecisionOption = "argmax",
):
    """Grade every row (rank scoring) and write the competition's submission format: ID,대출등급, input order.

    The table streams: read, scored and written --chunk-rows rows at a time into a temporary file that becomes
    --out only when every row is done (an error or Ctrl-C leaves nothing). Under accelerate launch the rows are
    split between the processes (one per GPU) and the main process writes them in input order.

    Examples:
      korllama predict runs/dacon-tiny --data ../shared/data/dacon-loan/test.csv --out submission.csv
      accelerate launch --num_processes 8 -m korllama predict runs/big --data big.csv --out big-graded.csv
    """
    from korllama.io import check_out_file

    check_out_file(out)  # before torch is even imported
    from korllama.predict import predict_file

    result = predict_file(run, data, out, proba, base, batch_size, console=err_console, chunk_rows=chunk_rows,
                          decision=decision)
    if not result:  # another process of `accelerate launch`: the main process writes the file and reports
        return
    shares = "  ".join(f"{k} {v / result['rows']:.1%}" for k, v in result["counts"].items())
    console.print(f"wrote {escape(result['out'])}: {result['rows']:,} rows ({shares})")


@app.command("evaluate")
def evaluate_cmd(
    run: RunArg = None,
    data: Annotated[Path, typer.Option("--data", help="Labelled table.")] = ...,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and predictions.csv.")] = ...,
    mode: Annotated[str, typer.Option("--mode", help="score (rank scoring, default) or generate (the original's "
                                                      "sampling + parsing).")] = "score",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Score a seeded sample of N rows.")] = None,
    held_out: Annotated[bool, typer.Option("--held-out", help="Only the run's validation split of --data (the rows "
                                                              "its training never saw).")] = False,
    base: BaseOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    name: Annotated[str | None, typer.Option("--name", help="System name in reports (default: the run's).")] = None,
    chunk_rows: ChunkOption = None,
    decision: DecisionOption = "argmax",
):
    """Score a run (or a base model) on labelled rows: macro-F1, accuracy, QWK, per-grade figures, confusion.

    Examples:
      korllama evaluate runs/dacon-tiny --data ../shared/data/dacon-loan/train.csv --held-out --out runs/eval/tuned
      korllama evaluate runs/dacon-tiny --base runs/dacon-tiny/base --data ... --held-out --out runs/eval/before
      korllama evaluate runs/dacon-tiny --data ... --held-out --mode generate --limit 200 --out runs/eval/generate
      accelerate launch --num_processes 8 -m korllama evaluate runs/big --data big.csv --out runs/eval/big
    """
    from korllama.evaluate import OUTPUT_FILES, evaluate_run
    from korllama.io import check_out_dir

    if mode not in ("score", "generate"):
        raise KorllamaError(f"--mode must be 'score' or 'generate', not {mode!r}.")
    check_out_dir(out, files=OUTPUT_FILES)
    r = evaluate_run(run, data, out, mode=mode, limit=limit, base=base, held_out=held_out, batch_size=batch_size,
                     system=name, console=err_console, chunk_rows=chunk_rows, decision=decision)
    if not r:  # another process of `accelerate launch`: the main process writes and reports
        return
    extra = f", invalid answers {r['invalid_rate']:.1%}" if mode == "generate" else ""
    console.print(f"{escape(r['system'])}: macro-F1 {r['macro_f1']:.4f}, accuracy {r['accuracy']:.4f}, "
                  f"{_qwk(r)}on {r['n']:,} rows ({r['rows_per_s']:.1f} rows/s{extra}) -> {escape(str(out))}")
    if r.get("decision"):
        d = r["decision"]
        console.print(f"decision rule, on the {d['rows']:,} rows it was not fitted on: argmax "
                      f"{d['argmax']['macro_f1']:.4f} -> rule {d['macro-f1']['macro_f1']:.4f} "
                      f"(--decision {r['decision_rule']} chose the predictions)")


@app.command("baseline")
def baseline_cmd(
    train_file: Annotated[Path, typer.Option("--train", help="Labelled table to fit on.")] = ...,
    eval_file: Annotated[Path | None, typer.Option("--eval", help="Labelled table to score (default: the "
                                                                  "held-out split of --train).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and predictions.csv.")] = ...,
    schema: SpecOption = None,
    config_file: Annotated[str | None, typer.Option(
        "--config", help="A run's config.yaml (or a built-in config name): its data.valid_fraction, data.split_seed "
                         "and data.spec give the split, so the trees see that run's held-out rows.")] = None,
    valid_fraction: Annotated[float | None, typer.Option(
        "--valid-fraction", min=0.01, max=0.99, help="Share held out without --eval. [default: 0.2]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Split seed without --eval. [default: 0]")] = None,
    decision: Annotated[str, typer.Option(
        "--decision", help="argmax: the most probable label. macro-f1: the decision rule (per-label weights fitted "
                           "on the trees' inner validation rows, stored as OUT/decision.json). metrics.json holds "
                           "both either way.")] = "argmax",
    budget: Annotated[float, typer.Option("--budget", min=0, help="Seconds for the parameter search: settings are "
                                                                   "tried until the next would not fit (the first "
                                                                   "always runs).")] = 600,
):
    """Gradient-boosted trees (LightGBM) on the cleaned columns plus the derived features, same metrics.

    Without --eval it fits on a stratified 80% of --train and scores the other 20%: the split `korllama train`
    makes with the default config (pass --config RUN/config.yaml for a run's own split). The trees stop early on
    an inner 10% of the fitting rows; a few settings are tried within --budget, each printed, and the best on
    those inner rows is kept, then refitted on all the fitting rows with the rounds it stopped at.

    Example: korllama baseline --train ../shared/data/dacon-loan/train.csv --out runs/eval/baseline
    """
    from korllama.config import load_config
    from korllama.decision import RULES
    from korllama.evaluate import OUTPUT_FILES, run_baseline
    from korllama.io import check_out_dir

    if decision not in RULES:
        raise KorllamaError(f"--decision must be one of {', '.join(RULES)}, not {decision!r}.")
    check_out_dir(out, files=(*OUTPUT_FILES, "decision.json"))
    data = load_config(config_file).data  # the defaults when no config is named: one source for the split
    r = run_baseline(train_file, eval_file, out, schema or data.spec,
                     data.valid_fraction if valid_fraction is None else valid_fraction,
                     data.split_seed if seed is None else seed, decision=decision, budget_s=budget,
                     console=err_console)
    a, d = r["decision"]["argmax"], r["decision"]["macro-f1"]
    console.print(f"baseline: macro-F1 {r['macro_f1']:.4f}, accuracy {r['accuracy']:.4f}, {_qwk(r)}on "
                  f"{r['n']:,} rows (fit {r['fit_seconds']:.0f}s) -> {escape(str(out))}")
    console.print(f"  argmax: macro-F1 {a['macro_f1']:.4f}, accuracy {a['accuracy']:.4f}; with the decision rule: "
                  f"macro-F1 {d['macro_f1']:.4f}, accuracy {d['accuracy']:.4f} (--decision {decision})")


@app.command("explain")
def explain_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory made by `korllama train`.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="Table whose rows to explain (labelled or not).")] = ...,
    out: Annotated[Path, typer.Option("--out", help="Folder for reasons.csv and explain.json (an evaluation "
                                                    "folder: `korllama compare` then shows the importance).")] = ...,
    ids: Annotated[list[str] | None, typer.Option("--id", help="Explain this row (repeat for more); default: "
                                                               "every row.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Reasons printed per row.")] = 3,
    held_out: Annotated[bool, typer.Option("--held-out", help="Only the run's validation split of --data (as "
                                                              "`evaluate --held-out`).")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="A seeded sample of N rows (the rows "
                                                                     "`evaluate --limit N` scores).")] = None,
    baseline: Annotated[bool, typer.Option("--baseline", help="Explain the tree baseline fitted on the run's "
                                                              "training split instead of the run's model.")] = False,
    show: Annotated[int, typer.Option("--show", min=0, help="Rows printed in words (all of them with --id).")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
):
    """Why each row got its grade: every field the prompt carries is set to a typical value in turn and the row is
    scored again; the reason is the change in the probability of the predicted grade.

    Writes OUT/reasons.csv (id, label, probability, rank, field, value, reference, delta, delta_<label>...) and
    prints the top reasons per row, e.g. "implied_rate 18.91% (typical 11.57%) raises E by 0.41".

    Examples:
      korllama explain runs/demo/run --data runs/demo/data.csv --id SYN_00007 --top 3 --out /tmp/why
      korllama explain runs/dacon-tiny --data ../shared/data/dacon-loan/train.csv --held-out --limit 1000 \
          --out runs/eval/tuned
      korllama explain runs/dacon-tiny --baseline --data ... --held-out --limit 1000 --out runs/eval/baseline
    """
    from korllama.explain import explain_run

    reasons, summary = explain_run(run, data, out, ids=ids, held_out=held_out, limit=limit, baseline=baseline,
                                   batch_size=batch_size, console=err_console)
    shown = len(reasons) if ids else min(show, len(reasons))
    for i in range(shown):
        label = reasons.classes[reasons.predicted[i]]
        console.print(f"[bold]{escape(reasons.ids[i])}[/]: {escape(label)} "
                      f"(P {reasons.proba[i, reasons.predicted[i]]:.2f})", highlight=False)
        for r in reasons.top(i, top):
            console.print(f"  {escape(r['text'])}", highlight=False)
    more = f" ({len(reasons) - shown:,} more rows in reasons.csv)" if shown < len(reasons) else ""
    console.print(f"{escape(summary['system'])}: {len(reasons):,} rows x {len(summary['fields'])} fields explained "
                  f"in {summary['seconds']:.1f}s ({summary['rows_per_s']:.1f} rows/s){more} -> "
                  f"{escape(str(Path(out) / 'reasons.csv'))}", highlight=False)


@app.command("compare")
def compare_cmd(
    folders: Annotated[list[Path], typer.Argument(help="Evaluation folders (each with metrics.json).")],
    out: Annotated[Path, typer.Option("--out", help="HTML report to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option("--title")] = "korllama report",
    allow_different_rows: Annotated[bool, typer.Option(
        "--allow-different-rows", help="Compare evaluations scored on different rows (the report then says so, "
                                       "with each system's row count).")] = False,
):
    """Write one self-contained HTML report comparing evaluations, with plots.

    The report holds a table of figures, confusion matrices, F1 per grade, a reliability diagram and the
    training curves. The systems must have been scored on the same rows (the IDs in each predictions.csv),
    unless --allow-different-rows.

    Example: korllama compare runs/eval/before runs/eval/tuned runs/eval/baseline --out report.html
    """
    from korllama.io import check_out_dir, check_out_file
    from korllama.report import compare, plots_folder

    check_out_file(out)
    check_out_dir(plots_folder(out), option=f"--out {out}: its plots folder")
    r = compare(folders, out, title, allow_different_rows=allow_different_rows)
    console.print(f"wrote {escape(str(out))}: " + ", ".join(f"{s} {f:.4f}" for s, f in r["systems"]))


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A finished run directory made by `korllama train`.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (new or empty): a Hugging Face model "
                                                    "folder.")] = ...,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous export in --out (a folder of "
                                                                "other files is never replaced).")] = False,
):
    """Write the run as a standard Hugging Face model folder for other serving stacks (vLLM, TGI, transformers).

    LoRA is merged into the base (merge_and_unload), a full-weight run is saved as is: safetensors, the tokenizer,
    a generation config, and korllama.json + README.md recording the labels, their token ids, the prompt template
    and the spec, so that another tool can score it. Loadable by AutoModelForCausalLM.from_pretrained(DIR).

    Example: korllama export runs/dacon-tiny --out exports/dacon-tiny
    """
    from korllama.export import export_run

    r = export_run(run, out, overwrite=overwrite)
    check = r["check"]
    agreed = (f"; its probabilities equal the run's within {check['max_abs_difference']:.1e} on "
              f"{check['rows']} example rows" if check["max_abs_difference"] is not None else "")
    console.print(f"exported {escape(str(run))} ({r['weights']}, {r['dtype']}) -> {escape(r['out'])}{agreed}")


@app.command("serve")
def serve_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory made by `korllama train`.", show_default=False)],
    host: Annotated[str, typer.Option("--host", help="Address to listen on: 127.0.0.1 is this machine only; "
                                                     "0.0.0.0 opens the service to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most applicants scored in one forward "
                                                                      "pass.")] = 64,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="How long the first pending request "
                                                                            "waits for others to batch with.")] = 10,
    decision: DecisionOption = "argmax",
):
    """Serve the run's rank scoring over HTTP: a grading page at /, POST /v1/grade, GET /health, docs at /docs.

    Requests arriving together are scored in one batched forward pass. Set KORLLAMA_TOKEN to require
    `Authorization: Bearer <token>` on /v1/grade.

    Example: korllama serve runs/demo/run --port 8000
    """
    import os

    import uvicorn

    from korllama.serve import create_app

    application = create_app(run, max_batch=max_batch, max_wait_ms=max_wait_ms, decision=decision)
    shown = f"[{host}]" if ":" in host else host
    has_token = bool(os.environ.get("KORLLAMA_TOKEN"))
    auth = "bearer token required ($KORLLAMA_TOKEN)" if has_token else "no token"
    console.print(f"serving {escape(str(run))} on {escape(f'http://{shown}:{port}')} (the page at /, docs at /docs, "
                  f"{auth}); Ctrl+C stops",
                  soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not has_token:
        err_console.print(f"[yellow]warning:[/] listening on {escape(host)} without a token: anyone who can reach "
                          "this port can use the model (set KORLLAMA_TOKEN).", soft_wrap=True)
    uvicorn.run(application, host=host, port=port, log_level="info")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/demo"),
    rows: Annotated[int, typer.Option("--rows", min=50, help="Rows of synthetic data.")] = 4000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
):
    """Run the whole loop on the embedded default: synthetic data -> train -> evaluate -> report (~1 min).

    Synthetic loan table -> check -> prompts -> the tiny Llama trained with configs/demo.yaml -> evaluation before
    and after tuning on held-out rows -> LightGBM baseline -> runs/demo/report.html.
    """
    from korllama.io import check_out_dir

    check_out_dir(out)  # before torch is even imported
    from korllama.demo import run_demo

    run_demo(out, rows=rows, seed=seed, console=console)


def _qwk(result: dict) -> str:
    """'QWK 0.9123 ' for an ordinal label set; nothing for labels without an order."""
    return f"QWK {result['qwk']:.4f} " if result.get("qwk") is not None else ""


def _show_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the typer app, turning KorllamaError into one sentence and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    _options["debug"] = False
    written.clear()
    warnings.showwarning = _show_warning
    command = typer.main.get_command(app)
    try:  # click handles usage errors and --help itself (standalone mode) and exits through SystemExit
        command.main(args=args, prog_name="korllama", standalone_mode=True)
    except KorllamaError as exc:
        if _options["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return _interrupted(args)
    except SystemExit as exc:  # standalone mode ends every run (success included) with SystemExit
        if _caused_by_ctrl_c(exc):  # typer turns Ctrl-C into a silent Exit(130)
            return _interrupted(args)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


# commands whose every output goes through korllama.io's atomic writes, at the end of their work
_ATOMIC_COMMANDS = {"data", "predict", "evaluate", "baseline", "compare"}


def _interrupted(args: list[str]) -> int:
    """Ctrl-C: say what exists now. The commands above write whole files only, and korllama.io lists them."""
    command = next((a for a in args if not a.startswith("-")), "")
    if command not in _ATOMIC_COMMANDS:
        message = "interrupted"
    elif written:
        message = f"interrupted; already written: {', '.join(str(p) for p in written)} (nothing else)"
    else:
        message = "interrupted; nothing written"
    err_console.print(message, highlight=False)
    return 130


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())

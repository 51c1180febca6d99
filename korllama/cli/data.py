"""`korllama data check|synth`, `templates`, `prompt`: tables in, and the prompt a row becomes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table as RichTable

from korllama.cli.app import (
    OverwriteOption,
    SpecOption,
    app,
    console,
    data_app,
)
from korllama.errors import KorllamaError, quote


@data_app.command("check")
def data_check(
    file: Annotated[Path, typer.Argument(help="CSV (utf-8, utf-8 with BOM or cp949) or Parquet file.")],
    spec: SpecOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON.")] = False,
):
    """Validate FILE against the table spec and print its profile: rows, columns, grades, warnings.

    Example:
      korllama data check ../shared/data/dacon-loan/train.csv
    """
    from korllama.data import TableChunks
    from korllama.data.table import Profile

    stream = TableChunks(file, spec)  # streamed: memory follows a chunk, not the file
    gathered = Profile(stream.spec)
    checked = stream.check(each=gathered.add)
    prof = gathered.result(stream.source, checked.warnings)
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
    overwrite: OverwriteOption = False,
):
    """Write a synthetic loan table with the real headers, raw formats and grade structure.

    Example:
      korllama data synth --rows 4000 --seed 0 --out synthetic.csv
    """
    from korllama.io import write_csv
    from korllama.outputs import claim_file
    from korllama.synth import synthesize

    claim_file(out, overwrite)
    frame = synthesize(rows, seed)
    try:
        write_csv(out, frame)
    except OSError as exc:  # --out is a folder, or under a file, or not writable: a user error, not a bug
        raise KorllamaError(f"Could not write {out}: {exc.strerror or exc}.") from None
    console.print(f"wrote {escape(str(out))} ({len(frame):,} rows, seed {seed})")


@app.command("templates")
def list_templates(spec: SpecOption = None):
    """List the prompt templates available for a table spec."""
    from korllama.prompts import templates
    from korllama.spec import load_spec

    for name, t in templates(load_spec(spec)).items():
        console.print(f"[cyan]{name:12}[/] {t.about}")


@app.command("prompt")
def prompt(
    file: Annotated[Path, typer.Argument(help="The table to read the row from.")],
    row_id: Annotated[str, typer.Option("--id", help="The row's ID (e.g. TEST_00000).")],
    template: Annotated[str, typer.Option("--template", "-t", help="seed, seed-clear, ko or compact.")] = "compact",
    spec: SpecOption = None,
):
    """Print the prompt one row becomes (and its answer, when the table is labelled).

    Example:
      korllama prompt ../shared/data/dacon-loan/test.csv --id TEST_00000 --template seed
    """
    from korllama.data import read_table
    from korllama.prompts import answer, get_template

    table = read_table(file, spec)
    template_ = get_template(table.spec, template)
    hits = table.ids[table.ids == row_id].index
    if len(hits) == 0:
        raise KorllamaError(f"{file.name} has no row with ID {quote(row_id)} (IDs look like {table.ids.iloc[0]!r}).")
    row = table.subset(hits)
    text = template_.render(row)[0]
    sys.stdout.write(text + (answer(row.labels.iloc[0]) if row.has_labels else "") + "\n")

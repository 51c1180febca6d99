"""`korllama demo`: the whole loop on the embedded default, so a newcomer sees every stage work once.

Today: synthetic loan table -> validation and profile -> prompts in every template. Training, evaluation and the
report join as those stages land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from korllama.data import profile, read_table
from korllama.io import write_csv, write_text
from korllama.prompts import answer, templates
from korllama.synth import synthesize


def run_demo(out: Path, rows: int = 4000, seed: int = 0, console: Console | None = None) -> dict:
    console = console or Console()
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)

    data_path = out / "data.csv"
    write_csv(data_path, synthesize(rows, seed))
    console.print(f"[bold]1. data[/]     synthetic loan table, {rows:,} rows (seed {seed}) -> {data_path}")

    table = read_table(data_path)
    prof = profile(table)
    rates = prof["derived_median_by_label"]["implied_rate"]
    console.print("[bold]2. check[/]    valid; median implied rate by grade: "
                  + "  ".join(f"{g} {r:.1%}" for g, r in rates.items() if r is not None))

    prompts_path = out / "prompts.jsonl"
    rendered = {name: t.render(table) for name, t in templates(table.spec).items()}
    lines = [json.dumps({"id": i, "template": name, "prompt": p[k], "answer": answer(table.labels.iloc[k])},
                        ensure_ascii=False)
             for name, p in rendered.items() for k, i in enumerate(table.ids)]
    write_text(prompts_path, "\n".join(lines) + "\n")
    console.print(f"[bold]3. prompts[/]  {len(lines):,} prompts in {len(rendered)} templates "
                  f"({', '.join(rendered)}) -> {prompts_path}")
    first = table.ids.iloc[0]
    console.print(f"\n[dim]the first row ({first}) in the 'compact' template, with its answer:[/]")
    console.print(rendered["compact"][0] + answer(table.labels.iloc[0]), highlight=False, markup=False)
    console.print(f"\ndone in {time.perf_counter() - started:.1f}s; see {out}/")
    return {"rows": rows, "prompts": len(lines), "seconds": time.perf_counter() - started}

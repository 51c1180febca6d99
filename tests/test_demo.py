"""`korllama demo` end to end on a small synthetic table: every stage runs and the report holds every system."""

from __future__ import annotations

import json

import pandas as pd

from korllama.demo import run_demo


def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    result = run_demo(tmp_path / "demo", rows=300, seed=1)
    out = tmp_path / "demo"
    metrics = {s: json.loads((out / "eval" / s / "metrics.json").read_text())
               for s in ("before", "after", "generate", "baseline")}
    assert {s: m["n"] for s, m in metrics.items()} == {"before": 60, "after": 60, "generate": 60, "baseline": 60}
    assert metrics["generate"]["mode"] == "generate" and metrics["after"]["mode"] == "score"
    # every system is judged on the same held-out rows (the split the training left out)
    ids = {s: pd.read_csv(out / "eval" / s / "predictions.csv")["ID"].tolist() for s in metrics}
    assert ids["before"] == ids["after"] == ids["baseline"] and set(ids["generate"]) == set(ids["after"])
    train_ids = set(pd.read_csv(out / "data.csv")["ID"]) - set(ids["after"])
    assert len(train_ids) == result["train"]["train_rows"] == 240
    assert (out / "run" / "model" / "model.safetensors").is_file()
    html = (out / "report.html").read_text("utf-8")
    assert html.count("data:image/png;base64,") >= 4  # confusion, F1 per grade, reliability, training curve
    for name in ("before tuning", "after tuning", "baseline (LightGBM)"):
        assert name in html
    assert "global importance" in html and "group metrics" in html and "model_card.md" in html  # korllama.explain
    assert len(pd.read_csv(out / "eval" / "after" / "reasons.csv")) == 60 * 3  # held-out rows x prompt fields
    assert [result[s] for s in ("before", "after", "baseline")] == [metrics[s]["macro_f1"]
                                                                    for s in ("before", "after", "baseline")]

"""`korllama demo` end to end on a small synthetic table: every stage runs and the report holds every system."""

from __future__ import annotations

import json

from korllama.demo import run_demo


def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    result = run_demo(tmp_path / "demo", rows=300, seed=1)
    out = tmp_path / "demo"
    for system in ("before", "after", "generate", "baseline"):
        metrics = json.loads((out / "eval" / system / "metrics.json").read_text())
        assert 0.0 <= metrics["macro_f1"] <= 1.0 and metrics["n"] > 0
    assert json.loads((out / "eval" / "generate" / "metrics.json").read_text())["mode"] == "generate"
    assert (out / "run" / "model" / "model.safetensors").is_file()
    html = (out / "report.html").read_text("utf-8")
    assert html.count("data:image/png;base64,") >= 4  # confusion, F1 per grade, reliability, training curve
    for name in ("before tuning", "after tuning", "baseline (LightGBM)"):
        assert name in html
    assert result["after"] == json.loads((out / "eval" / "after" / "metrics.json").read_text())["macro_f1"]

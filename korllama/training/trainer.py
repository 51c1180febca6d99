"""GradeTrainer: the transformers Trainer with korllama's loss (logits only where the answer is; a classification
head's cross-entropy over the labels) and evaluation (the held-out prompts scored as every command scores them: rank
scoring, or the head; macro-F1, the competition's metric), stopping at a non-finite loss."""

from __future__ import annotations

import math
import time

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from transformers import Trainer

from korllama.errors import KorllamaError
from korllama.scoring import predict_labels, score
from korllama.training.losses import answer_loss, head_loss, loss_window, weighted_items


class GradeTrainer(Trainer):
    """A Trainer whose evaluation is rank scoring of its eval_dataset (prompt ids + true label): macro-F1 and
    accuracy, the competition's metric; and which stops at the first non-finite loss, naming the step.

    Each evaluation also logs `eval_cpu_minutes`: this process's CPU time (time.process_time(), every thread) since
    `cpu_started` (a time.process_time() reading taken when training began), plus `cpu_minutes_before` (what a
    resumed run's curve had reached), so trainer_state.json's log_history holds a validation curve against cost."""

    def __init__(self, *args, classes: list[str], eval_batch_size: int, cpu_started: float | None = None,
                 cpu_minutes_before: float = 0.0, head_weight=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_weight = head_weight  # a classification head's per-label loss weights (train.class_weights)
        self.classes, self.eval_batch = classes, eval_batch_size
        self.cpu_started = time.process_time() if cpu_started is None else cpu_started
        self.cpu_minutes_before = cpu_minutes_before
        self.eval_proba: dict[int, np.ndarray] = {}  # step -> probabilities of the eval rows (for the decision rule)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not math.isfinite(float(loss)):
            raise KorllamaError(f"The training loss became {float(loss)} at step {self.state.global_step + 1}: the "
                                "weights are no longer usable. Lower train.lr (or check the data); resume from an "
                                "earlier checkpoint with --resume, or start over with --overwrite.")
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss where the labels are, with logits only there: the model runs with `logits_to_keep` = the
        batch's loss window (loss_window; 3 columns for a one-token grade + EOS when the collator pads on the left),
        and `compute_loss_func` (class_weighted_loss) or answer_loss gets those logits and the same columns of the
        labels. Equal to the model's own full-logits loss on the batch; normalised by `num_items_in_batch` when the
        Trainer counts it, so gradient accumulation and several processes scale it as they would the model's."""
        inputs = dict(inputs)
        rows = inputs.pop("weight", None)  # train.distinct_prompts: the rows each example stands for
        if "classes" in inputs:  # a classification head (model.head): its logits are one per label, at the last token
            targets = inputs.pop("classes")
            outputs = model(**inputs, use_cache=False)
            # a mean over the batch's rows, no num_items_in_batch (there is no `labels` column to count): the
            # Trainer divides it by the accumulation steps itself
            loss = head_loss(outputs.logits, targets, self.head_weight, rows)
            return (loss, outputs) if return_outputs else loss
        labels = inputs.pop("labels")
        keep = loss_window(labels)
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        loss_fn = self.compute_loss_func or answer_loss
        extra = {} if rows is None else {"rows": rows}  # a user's compute_loss_func need not take rows
        loss = loss_fn(outputs, labels[:, -keep:], num_items_in_batch=num_items_in_batch, **extra)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as Trainer.compute_loss does
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's step batches and labelled-token count; with distinct examples (a `weight` column) each
        example's tokens count as often as the rows it stands for, so the step's loss is its rows' per-token mean."""
        batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if items is not None and batches and "weight" in batches[0]:
            plain, weighted = weighted_items(batches)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:  # items was gathered
                plain, weighted = (self.accelerator.gather(x.to(device)).sum() for x in (plain, weighted))
            items = items * (weighted.to(device) / plain.clamp(min=1).to(device))
        return batches, items

    def cpu_minutes(self) -> float:
        """The training's CPU minutes so far (this process, every thread), a resumed run's earlier ones included."""
        return self.cpu_minutes_before + (time.process_time() - self.cpu_started) / 60

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        started = time.perf_counter()
        proba = score(self.model, self.processing_class, None, self.classes, self.eval_batch,
                      encoded=dataset["input_ids"])
        truth, pred = dataset["label"], predict_labels(proba, self.classes)
        if dataset is self.eval_dataset:
            self.eval_proba[self.state.global_step] = proba
        metrics = {
            f"{metric_key_prefix}_macro_f1": float(f1_score(truth, pred, labels=self.classes, average="macro",
                                                            zero_division=0)),
            f"{metric_key_prefix}_accuracy": float(accuracy_score(truth, pred)),
            f"{metric_key_prefix}_rows_per_s": len(pred) / (time.perf_counter() - started),
            f"{metric_key_prefix}_cpu_minutes": self.cpu_minutes(),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

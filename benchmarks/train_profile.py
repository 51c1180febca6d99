"""Where a training's CPU goes: `korllama train` (training, then the curve and the model card, as the CLI runs them)
in this process, with the CPU time (time.process_time(): every thread) of each phase counted exclusively.

    flock /tmp/korllama-cpu.lock python benchmarks/train_profile.py --config configs/dacon-tiny.yaml \
        --data ../shared/data/dacon-loan/train.csv --out /tmp/profile-run [OVERRIDES...]

Phases: the collator (padding), the dataloader around it (dataset rows, the step's batches), the forward pass and
loss (GradeTrainer.compute_loss), backward, gradient clipping, the optimizer (step, zero_grad, the lr schedule),
each evaluation (rank scoring of the eval rows), keeping the best weights, checkpoints (save and verify), the
Trainer's remaining bookkeeping (logging, callbacks, the loop), setup before the loop (reading, rendering,
tokenising, the tiny base), the decision rule, and the curve + model card. Also printed: the training batches'
rows, distinct (prompt, label) rows, padded and real tokens, and the distinct prompts of each evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import wraps


class PhaseClock:
    """Exclusive CPU seconds per phase: entering a nested phase stops its parent's clock."""

    def __init__(self):
        self.spent, self.calls, self.stack = defaultdict(float), defaultdict(int), []
        self.mark = time.process_time()

    def _charge(self):
        now = time.process_time()
        if self.stack:
            self.spent[self.stack[-1]] += now - self.mark
        self.mark = now

    @contextmanager
    def phase(self, name: str):
        self._charge()
        self.stack.append(name)
        self.calls[name] += 1
        try:
            yield
        finally:
            self._charge()
            self.stack.pop()

    def wrap(self, owner, attribute: str, name: str):
        original = getattr(owner, attribute)

        @wraps(original)
        def timed(*args, **kwargs):
            with self.phase(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


def instrument(clock: PhaseClock, batches: list, evals: list) -> None:
    import accelerate
    import torch
    from accelerate.optimizer import AcceleratedOptimizer
    from transformers import Trainer
    from transformers.integrations import TensorBoardCallback

    from korllama import card, scoring
    from korllama.training import callbacks, collate, recipe, trainer

    original_collate = collate.LeftPaddedCollator.__call__

    def counted_collate(self, features):
        batch = original_collate(self, features)
        pairs = {(tuple(f["input_ids"]), tuple(f.get("labels", ()))) for f in features}
        batches.append((len(features), len(pairs), int(batch["input_ids"].numel()),
                        int(batch["attention_mask"].sum())))
        return batch

    collate.LeftPaddedCollator.__call__ = counted_collate
    original_distinct = scoring.distinct_rows

    def counted_distinct(encoded):
        distinct, where = original_distinct(encoded)
        evals.append((len(encoded), len(distinct)))
        return distinct, where

    scoring.distinct_rows = counted_distinct
    clock.wrap(collate.LeftPaddedCollator, "__call__", "collate (padding)")
    clock.wrap(trainer.GradeTrainer, "get_batch_samples", "dataloader (rows -> batch)")
    clock.wrap(trainer.GradeTrainer, "compute_loss", "forward + loss")
    clock.wrap(accelerate.Accelerator, "backward", "backward")
    clock.wrap(Trainer, "_clip_grad_norm", "gradient clipping")
    clock.wrap(AcceleratedOptimizer, "step", "optimizer step")
    clock.wrap(torch.nn.Module, "zero_grad", "optimizer step")
    clock.wrap(trainer.GradeTrainer, "evaluate", "evaluation (rank scoring)")
    clock.wrap(callbacks.KeepBest, "on_evaluate", "keep best weights")
    clock.wrap(Trainer, "_save_checkpoint", "checkpoints")
    clock.wrap(callbacks.VerifyCheckpoint, "on_save", "checkpoints")
    clock.wrap(TensorBoardCallback, "on_log", "tensorboard + progress")
    clock.wrap(callbacks.RichProgress, "on_step_end", "tensorboard + progress")
    clock.wrap(callbacks.RichProgress, "on_log", "tensorboard + progress")
    clock.wrap(trainer.GradeTrainer, "train", "Trainer's bookkeeping (loop, logging)")
    clock.wrap(recipe, "fit_run_decision", "decision rule")
    clock.wrap(card, "document_run", "curve + model card")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-card", action="store_true", help="stop after training (no curve, no model card)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from korllama import card
    from korllama.run import Run
    from korllama.training import resolve_run, train

    clock, batches, evals = PhaseClock(), [], []
    instrument(clock, batches, evals)
    started, wall = time.process_time(), time.perf_counter()
    with clock.phase("setup (read, render, tokenise, base)"):
        config, run_dir = resolve_run(args.config, [*args.overrides, f"data.train={args.data}"], args.out, False,
                                      False)
        summary = train(config, run_dir)
        if not args.no_card:
            card.document_run(Run.load(run_dir))
    total = time.process_time() - started
    print(f"whole: {total:.1f} CPU s, {time.perf_counter() - wall:.1f} s wall; {summary['global_step']} steps, "
          f"best {summary['best_eval_macro_f1']:.4f} at {summary['best_step']}")
    print("| phase | CPU s | share | calls |\n| --- | ---: | ---: | ---: |")
    for name, spent in sorted(clock.spent.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {spent:.1f} | {100 * spent / total:.1f}% | {clock.calls[name]:,} |")
    train_batches = [b for b in batches if b[0] > 0]
    rows = sum(b[0] for b in train_batches)
    print(f"training batches: {len(train_batches):,}; rows {rows:,}; distinct (prompt, label) rows within a batch "
          f"{sum(b[1] for b in train_batches):,} ({100 * sum(b[1] for b in train_batches) / max(rows, 1):.1f}%); "
          f"padded tokens {sum(b[2] for b in train_batches):,}, real {sum(b[3] for b in train_batches):,}")
    print("scoring calls (rows, distinct prompts):", json.dumps(evals))


if __name__ == "__main__":
    main()

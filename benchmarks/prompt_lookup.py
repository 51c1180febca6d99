"""What the dacon-tiny prompt's three fields allow a memoriser: the held-out accuracy of a lookup table from the exact
field values (as the prompt writes them, or the rate at other precisions) to the training rows' majority grade.

    PYTHONPATH=. python benchmarks/prompt_lookup.py --data ../shared/data/dacon-loan/train.csv
    PYTHONPATH=. python benchmarks/prompt_lookup.py --data ... --predictions EVAL/predictions.csv   # a run's too
    PYTHONPATH=. python benchmarks/prompt_lookup.py --data D --fields term,payments_made,implied_rate term,schedule_rate

Same split as `korllama train` (stratified 80/20, seed 0). Per key set: keys; their purity on the training rows that
have a rate (the best any model reading only those values can do on those rows); the share of held-out rows whose key
occurs in training; held-out macro-F1 / accuracy of the lookup (an unseen key gets the commonest grade, B), on the
rows with a rate, and on those among them whose key was or was not seen. The prompt writes the rate to 0.01% (4
decimals of the fraction) and the payments as a whole number; rows without a rate share one key.

--predictions (the predictions.csv of `korllama evaluate RUN --held-out`): that model's accuracy beside the lookup's on
the same groups of held-out rows (prompt text seen in training or not), the text being the first --fields choice
(by default the term, payments made and implied rate: give the run's own prompt.fields first).

--fields (one or more comma-separated lists of prompt fields: the choices of `prompt.fields` to compare): instead of
the precision table, one line per choice with the lookup keyed on the whole prompt text the compact template writes
for those fields (what a model reading that prompt sees): distinct prompts in training, the share of held-out rows
whose prompt was seen, the lookup's held-out macro-F1 and accuracy, and its accuracy on the rated rows whose prompt
was seen. A choice whose prompts repeat more (fewer keys, most of them seen) and are purer is easier to learn.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from korllama.data import read_table, split
from korllama.prompts import render

SHIPPED_BEFORE = "term,payments_made,implied_rate"  # the dacon-tiny prompt this benchmark was written for


def majority_lookup(k_train, y_train, k_held, default: str):
    """(majority grade of each training key, that grade's count, whether each held-out key was seen, the lookup's
    prediction of each held-out row: the key's majority grade, `default` for an unseen key)."""
    # groups in order of first appearance, so a tie goes to the grade seen first for that key
    pairs = pd.DataFrame({"k": list(k_train), "y": y_train})
    counts = pairs.groupby(["k", "y"], sort=False).size().reset_index(name="n")
    top = counts.sort_values("n", ascending=False, kind="stable").drop_duplicates("k")
    majority = pd.Series(top["y"].to_numpy(), index=pd.Index(top["k"], tupleize_cols=False))
    found = pd.Series(list(k_held), dtype=object).map(majority)
    top_n = pd.Series(top["n"].to_numpy(), index=majority.index)
    return majority, top_n, found.notna().to_numpy(), found.fillna(default).to_numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--predictions", default=None, help="a held-out predictions.csv to compare with the lookup")
    parser.add_argument("--fields", nargs="+", default=None, help="prompt.fields choices to compare, each a,b,c")
    args = parser.parse_args(argv)

    train, held_out, _ = split(read_table(args.data), 0.2, 0)
    y_train, y_held = train.labels.to_numpy(), held_out.labels.to_numpy()
    rated = ~np.isnan(held_out.frame["implied_rate"].to_numpy(float))
    common = pd.Series(y_train).value_counts().index[0]
    train_rated = int((~np.isnan(train.frame["implied_rate"].to_numpy(float))).sum())

    def keys(part, digits, payments):
        rate = part.frame["implied_rate"].to_numpy(float)
        rate = np.round(rate, digits) if digits is not None else rate
        made = np.round(part.frame["payments_made"].to_numpy(float)) if payments else np.zeros(len(part))
        # a row that repaid nothing has no rate (NaN): one key for all of them, as the prompt writes "Unknown"
        return list(zip(part.frame["term"].astype(str), np.nan_to_num(rate, nan=-1.0), np.nan_to_num(made, nan=-1.0)))

    def prompts(part, choice: str):
        return render(part, "compact", choice.split(","))

    if args.fields:
        print("| prompt fields | distinct prompts | held-out seen | macro-F1 | accuracy | acc. rated & seen |")
        print("| --- | --- | --- | --- | --- | --- |")
        for choice in args.fields:
            k_train, k_held = prompts(train, choice), prompts(held_out, choice)
            majority, _, seen, pred = majority_lookup(k_train, y_train, k_held, common)
            print(f"| {choice.replace(',', ', ')} | {len(majority):,} | {seen.mean():.3f} "
                  f"| {f1_score(y_held, pred, average='macro'):.4f} | {accuracy_score(y_held, pred):.4f} "
                  f"| {(pred[rated & seen] == y_held[rated & seen]).mean():.4f} |", flush=True)
    else:
        print("| rate decimals (fraction) | payments | keys | train purity | held-out seen | macro-F1 | accuracy "
              "| acc. rated | acc. rated & seen | acc. rated & unseen |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for digits in (None, 6, 5, 4, 3):
            for payments in (True, False):
                majority, top_n, seen, pred = majority_lookup(keys(train, digits, payments), y_train,
                                                              keys(held_out, digits, payments), common)
                purity = top_n[[k[1] != -1 for k in top_n.index]].sum() / train_rated
                shown = "exact" if digits is None else digits
                print(f"| {shown} | {'yes' if payments else 'no'} | {len(majority):,} "
                      f"| {purity:.4f} | {seen.mean():.3f} | {f1_score(y_held, pred, average='macro'):.4f} "
                      f"| {accuracy_score(y_held, pred):.4f} | {(pred[rated] == y_held[rated]).mean():.4f} "
                      f"| {(pred[rated & seen] == y_held[rated & seen]).mean():.4f} "
                      f"| {(pred[rated & ~seen] == y_held[rated & ~seen]).mean():.4f} |", flush=True)

    if args.predictions:
        choice = args.fields[0] if args.fields else SHIPPED_BEFORE  # the model's own prompt text is the key
        _, _, seen, pred = majority_lookup(prompts(train, choice), y_train, prompts(held_out, choice), common)
        index = held_out.ids.to_numpy()
        lookup, seen, rated_ids = (pd.Series(v, index=index) for v in (pred, seen, rated))
        model = pd.read_csv(args.predictions, keep_default_na=False).set_index("ID")
        print(f"\n{args.predictions}: {len(model):,} held-out rows; prompt text of {choice}")
        print("| rows | n | model accuracy | lookup accuracy |")
        print("| --- | --- | --- | --- |")
        for name, mask in (("all", seen | ~seen), ("rated, prompt seen", rated_ids & seen),
                           ("rated, prompt unseen", rated_ids & ~seen), ("no rate", ~rated_ids)):
            ids = mask.index[mask.to_numpy()].intersection(model.index)
            right = (model.loc[ids, "prediction"] == model.loc[ids, "truth"]).mean()
            print(f"| {name} | {len(ids):,} | {right:.4f} | {(lookup[ids] == model.loc[ids, 'truth']).mean():.4f} |")


if __name__ == "__main__":
    main()

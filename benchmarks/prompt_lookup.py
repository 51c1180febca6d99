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

--predictions (the predictions.csv of `korllama evaluate RUN --held-out`, e.g. of a configs/dacon-tiny.yaml run): that
model's accuracy beside the lookup's on the same groups of held-out rows (prompt text seen in training or not).

--fields (one or more comma-separated lists of prompt fields: the choices of `prompt.fields` to compare): instead of
the precision table, one line per choice with the lookup keyed on the whole prompt text the compact template writes
for those fields (what a model reading that prompt sees): distinct prompts in training, the share of held-out rows
whose prompt was seen, the lookup's held-out macro-F1 and accuracy, and its accuracy on the rated rows whose prompt
was seen. A choice whose prompts repeat more (fewer keys, most of them seen) and are purer is easier to learn.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--predictions", default=None, help="a held-out predictions.csv to compare with the lookup")
    parser.add_argument("--fields", nargs="+", default=None, help="prompt.fields choices to compare, each a,b,c")
    args = parser.parse_args(argv)

    from sklearn.metrics import accuracy_score, f1_score

    from korllama.data import read_table, split

    train, held_out = split(read_table(args.data), 0.2, 0)
    y_train, y_held = train.labels.to_numpy(), held_out.labels.to_numpy()
    rated = ~np.isnan(held_out.frame["implied_rate"].to_numpy(float))
    common = collections.Counter(y_train).most_common(1)[0][0]
    train_rated = int((~np.isnan(train.frame["implied_rate"].to_numpy(float))).sum())

    def keys(part, digits, payments):
        rate = part.frame["implied_rate"].to_numpy(float)
        rate = np.round(rate, digits) if digits is not None else rate
        made = np.round(part.frame["payments_made"].to_numpy(float)) if payments else np.zeros(len(part))
        # a row that repaid nothing has no rate (NaN): one key for all of them, as the prompt writes "Unknown"
        return list(zip(part.frame["term"].astype(str), np.nan_to_num(rate, nan=-1.0), np.nan_to_num(made, nan=-1.0)))

    if args.fields:
        from korllama.prompts import render

        print("| prompt fields | distinct prompts | held-out seen | macro-F1 | accuracy | acc. rated & seen |")
        print("| --- | --- | --- | --- | --- | --- |")
        for choice in args.fields:
            fields = choice.split(",")
            k_train, k_held = render(train, "compact", fields), render(held_out, "compact", fields)
            table = collections.defaultdict(collections.Counter)
            for k, y in zip(k_train, y_train):
                table[k][y] += 1
            seen = np.array([k in table for k in k_held])
            pred = np.array([table[k].most_common(1)[0][0] if k in table else common for k in k_held])
            print(f"| {', '.join(fields)} | {len(table):,} | {seen.mean():.3f} "
                  f"| {f1_score(y_held, pred, average='macro'):.4f} | {accuracy_score(y_held, pred):.4f} "
                  f"| {(pred[rated & seen] == y_held[rated & seen]).mean():.4f} |", flush=True)
        return

    print("| rate decimals (fraction) | payments | keys | train purity | held-out seen | macro-F1 | accuracy "
          "| acc. rated | acc. rated & seen | acc. rated & unseen |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for digits in (None, 6, 5, 4, 3):
        for payments in (True, False):
            k_train, k_held = keys(train, digits, payments), keys(held_out, digits, payments)
            table = collections.defaultdict(collections.Counter)
            for k, y in zip(k_train, y_train):
                table[k][y] += 1
            seen = np.array([k in table for k in k_held])
            pred = np.array([table[k].most_common(1)[0][0] if k in table else common for k in k_held])
            purity = sum(c.most_common(1)[0][1] for k, c in table.items() if k[1] != -1) / train_rated
            print(f"| {'exact' if digits is None else digits} | {'yes' if payments else 'no'} | {len(table):,} "
                  f"| {purity:.4f} | {seen.mean():.3f} | {f1_score(y_held, pred, average='macro'):.4f} "
                  f"| {accuracy_score(y_held, pred):.4f} | {(pred[rated] == y_held[rated]).mean():.4f} "
                  f"| {(pred[rated & seen] == y_held[rated & seen]).mean():.4f} "
                  f"| {(pred[rated & ~seen] == y_held[rated & ~seen]).mean():.4f} |", flush=True)

    if args.predictions:
        import pandas as pd

        k_train, k_held = keys(train, 4, True), keys(held_out, 4, True)  # the prompt's own text
        table = collections.defaultdict(collections.Counter)
        for k, y in zip(k_train, y_train):
            table[k][y] += 1
        lookup = pd.Series([table[k].most_common(1)[0][0] if k in table else common for k in k_held],
                           index=held_out.ids.to_numpy())
        seen = pd.Series([k in table for k in k_held], index=held_out.ids.to_numpy())
        rated_ids = pd.Series(rated, index=held_out.ids.to_numpy())
        model = pd.read_csv(args.predictions, keep_default_na=False).set_index("ID")
        print(f"\n{args.predictions}: {len(model):,} held-out rows")
        print("| rows | n | model accuracy | lookup accuracy |")
        print("| --- | --- | --- | --- |")
        for name, mask in (("all", seen | ~seen), ("rated, prompt seen", rated_ids & seen),
                           ("rated, prompt unseen", rated_ids & ~seen), ("no rate", ~rated_ids)):
            ids = [i for i in mask[mask].index if i in model.index]
            right = (model.loc[ids, "prediction"] == model.loc[ids, "truth"]).mean()
            print(f"| {name} | {len(ids):,} | {right:.4f} | {(lookup[ids] == model.loc[ids, 'truth']).mean():.4f} |")


if __name__ == "__main__":
    main()

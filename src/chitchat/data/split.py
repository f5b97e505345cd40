"""Train / validation / test split grouped by question and stratified by category.

All answers to one question (after the match key: case, ё, punctuation) go to the same split, so
validation never scores a question the model was trained on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import polars as pl
from sklearn.model_selection import train_test_split

from chitchat.data.normalize import match_key
from chitchat.errors import InputError

SPLITS = ("train", "valid", "test")
RARE = "__rare__"


@dataclass(frozen=True)
class SplitConfig:
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 13
    stratify: bool = True


def _merge_rare(strata: list[str], minimum: int) -> list[str]:
    counts = Counter(strata)
    return [s if counts[s] >= minimum else RARE for s in strata]


def _split(keys: list[str], strata: list[str], n_out: int, seed: int, stratify: bool):
    """Split keys into (kept, taken) with `n_out` taken; stratified when the counts allow."""
    merged = _merge_rare(strata, 2)
    if stratify and len(set(merged)) > 1:  # one stratum would only pretend to stratify
        try:
            kept, taken = train_test_split(keys, test_size=n_out, stratify=merged, random_state=seed)
            return kept, taken, True
        except ValueError:  # too few groups per category for this split size
            pass
    kept, taken = train_test_split(keys, test_size=n_out, random_state=seed)
    return kept, taken, False


def split_pairs(df: pl.DataFrame, cfg: SplitConfig, source: str = "pairs"):
    """Return ({split: frame}, report dict)."""
    if not 0 < cfg.valid_fraction < 1 or not 0 < cfg.test_fraction < 1:
        raise InputError(source, "split fractions must lie strictly between 0 and 1")
    if cfg.valid_fraction + cfg.test_fraction >= 1:
        raise InputError(source, "valid_fraction + test_fraction must be below 1")
    keyed = df.with_columns(match_key(pl.col("question")).alias("_group"))
    groups = keyed.group_by("_group", maintain_order=True).agg(pl.col("category").first())
    n = groups.height
    if n < 3:
        raise InputError(source, f"only {n} distinct questions: too few to split three ways")
    keys = groups["_group"].to_list()
    cats = dict(zip(keys, groups["category"].to_list()))
    n_valid = max(1, round(n * cfg.valid_fraction))
    n_test = max(1, round(n * cfg.test_fraction))

    train_keys, held, strat_1 = _split(keys, [cats[k] for k in keys], n_valid + n_test, cfg.seed, cfg.stratify)
    valid_keys, test_keys, strat_2 = _split(held, [cats[k] for k in held], n_test, cfg.seed, cfg.stratify)

    assignment = pl.DataFrame(
        {"_group": train_keys + valid_keys + test_keys,
         "split": ["train"] * len(train_keys) + ["valid"] * len(valid_keys) + ["test"] * len(test_keys)}
    )
    tagged = keyed.join(assignment, on="_group", how="left", maintain_order="left")
    frames = {name: tagged.filter(pl.col("split") == name).drop("_group", "split") for name in SPLITS}
    report = {
        "stratified": strat_1 and strat_2,
        "questions": {"train": len(train_keys), "valid": len(valid_keys), "test": len(test_keys)},
        "pairs": {name: frames[name].height for name in SPLITS},
        "categories": {
            name: dict(sorted(Counter(frames[name]["category"].to_list()).items())) for name in SPLITS
        },
    }
    return frames, report

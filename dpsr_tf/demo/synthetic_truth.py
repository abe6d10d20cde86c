"""The synthetic catalog's ground truth: what the generator knows and a model must recover.

ground_truth.json (config, counts, taxonomy, the senses of polysemous terms by user segment) and
ground_truth_queries.tsv (clean query -> intents with clicks) are written here and read back by
the tests and `dpsr report`; synthetic_catalog.py writes the per-user and per-interaction files
as it streams them.
"""
import dataclasses
import json
import os
from typing import Dict

from dpsr_tf.data import split as split_lib
from dpsr_tf.demo import synthetic_taxonomy as tx

GROUND_TRUTH_JSON = "ground_truth.json"
QUERIES_TRUTH_TSV = "ground_truth_queries.tsv"
USERS_TRUTH_TSV = "ground_truth_users.tsv"
INTERACTIONS_TRUTH_TSV = "ground_truth_interactions.tsv"


def write_query_truth(out_dir: str, query_intents) -> None:
    with open(os.path.join(out_dir, QUERIES_TRUTH_TSV), "w", encoding="utf-8",
              newline="\n") as f:
        f.write("clean_query\tcount\tintents\n")
        for query in sorted(query_intents):
            intents = query_intents[query]
            total = sum(intents.values())
            shown = ";".join(f"{k}:{v}" for k, v in sorted(intents.items(),
                                                             key=lambda kv: (-kv[1], kv[0])))
            f.write(f"{query}\t{total}\t{shown}\n")


def write_ground_truth(cfg, world, out_dir, poly_counts, counts, num_clean) -> None:
    polysemy = {}
    for i, term in enumerate(world.poly_terms):
        senses = []
        for j, sense in enumerate(world.polysemy[term]):
            by_segment = {}
            for g, gname in enumerate(("m", "f", "unknown")):
                for p, pname in enumerate(tx.PURCHASE_POWER):
                    total = poly_counts[i, :, g, p].sum()
                    if total:
                        by_segment[f"{gname}/{pname}"] = round(
                            float(poly_counts[i, j, g, p] / total), 4)
            senses.append({"intent": world.intent(world.type_index[sense.type_key],
                                                  world.brand_index[sense.brand]
                                                  if sense.brand else -1, -1, -1),
                           "category": world.categories[world.type_cat[
                               world.type_index[sense.type_key]]].key,
                           "clicks": int(poly_counts[i, j].sum()),
                           "share_by_gender_and_purchase_power": by_segment})
        polysemy[term] = senses
    taxonomy = {
        cat.key: {"zh": cat.zh, "brands": list(cat.brands), "gendered": cat.gendered,
                  "types": {t.key: {"en": [t.en, *t.en_synonyms], "zh": [t.zh, *t.zh_synonyms]}
                            for t in cat.types}}
        for cat in world.categories}
    config = dataclasses.asdict(cfg)
    if not cfg.polysemous_brands:   # the default catalog's ground truth as before the option
        del config["polysemous_brands"]
    for name in ("minor_sense_weight", "polysemous_brand_share"):
        if config[name] is None:   # catalogs made without the options: as before them
            del config[name]
    truth = {
        "config": config,
        "counts": dict(counts, clean_queries=num_clean),
        "intent_format": "product_type|brand|color|gender ('*' = not named by the query)",
        "polysemy": polysemy,
        "category_tilt_by_segment": tx.CATEGORY_TILT,
        "preferences": {
            "tier_match": cfg.tier_match,
            "gender_match": cfg.gender_match,
            "purchase_power_to_tier": dict(zip(tx.PURCHASE_POWER, tx.TIERS)),
            "brand_choice": "brands of the user's tier weigh 3x when the query names a brand"},
        "taxonomy": taxonomy,
        "brands": {k: {"en": b.en, "zh": b.zh, "tier": tx.TIERS[b.tier_bias]}
                   for k, b in world.brands.items()},
        "files": {"queries": QUERIES_TRUTH_TSV, "users": USERS_TRUTH_TSV,
                  "interactions": INTERACTIONS_TRUTH_TSV if cfg.write_interaction_truth
                  else None},
    }
    if world.added_brands:
        truth["polysemous_brands"] = {
            word: {"categories": list(world.added_categories[word]),
                   "eval_split": split_lib.is_eval_query(word)}
            for word in world.added_brands}
    with open(os.path.join(out_dir, GROUND_TRUTH_JSON), "w", encoding="utf-8") as f:
        json.dump(truth, f, indent=1, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def load_ground_truth(output_dir: str) -> dict:
    """ground_truth.json of a generated catalog."""
    with open(os.path.join(output_dir, GROUND_TRUTH_JSON), encoding="utf-8") as f:
        return json.load(f)


def load_query_intents(output_dir: str) -> Dict[str, Dict[str, int]]:
    """clean query -> {intent: clicks} from ground_truth_queries.tsv."""
    out = {}
    with open(os.path.join(output_dir, QUERIES_TRUTH_TSV), encoding="utf-8") as f:
        next(f)
        for line in f:
            query, _, intents = line.rstrip("\n").split("\t")
            out[query] = {k: int(v) for k, v in (x.rsplit(":", 1) for x in intents.split(";"))}
    return out

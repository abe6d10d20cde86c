"""Best Buy mobile-site click log (Kaggle ACM SF hackathon; Xbox 360 games) -> three files.

Mapping:
  items.tsv         item_id = sku, title = product name from sku_name.tsv (all 437 named skus),
                    category = the click log's category of the sku ("" if never clicked)
  users.tsv         user_id = the hashed user id (every user of clicks.csv; no profile)
  interactions.tsv  query = query, user_id = user, item_id = sku, label = click,
                    timestamp = click_time (ISO 8601, UTC assumed)
Clicks on the 21 skus without a product name are skipped (counted): an item needs a title.
Prepare with --split=time (the latest 10% of clicks are eval) or the default query hash.
"""
import csv
import os

from dpsr_tf.data.converters import common
from dpsr_tf.data.readers import write_table


def convert(input_dir: str, output_dir: str) -> common.ConversionResult:
    clicks_path = common.require_file(input_dir, "clicks.csv")
    names_path = common.require_file(input_dir, "sku_name.tsv")
    names = {}
    duplicate_names = 0
    with open(names_path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            sku, name = line.split("\t", 1)
            if sku in names:
                duplicate_names += 1
                continue
            names[sku] = name
    categories, users, interactions = {}, {}, []
    skipped_unnamed = 0
    rows = 0
    with open(clicks_path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            rows += 1
            users.setdefault(row["user"], None)
            if row["sku"] not in names:
                skipped_unnamed += 1
                continue
            categories.setdefault(row["sku"], row["category"])
            interactions.append((common.tsv_cell(row["query"]), row["user"], row["sku"], "click",
                                 row["click_time"]))
    os.makedirs(output_dir, exist_ok=True)
    n_items = write_table(os.path.join(output_dir, common.ITEMS_TSV),
                          ["item_id", "title", "category"],
                          ((sku, common.tsv_cell(name), categories.get(sku, ""))
                           for sku, name in names.items()))
    n_users = write_table(os.path.join(output_dir, common.USERS_TSV), ["user_id"],
                          ((u,) for u in users))
    n_inter = write_table(os.path.join(output_dir, common.INTERACTIONS_TSV),
                          ["query", "user_id", "item_id", "label", "timestamp"], interactions)
    skipped = {"clicks on skus without a product name": skipped_unnamed}
    if duplicate_names:
        skipped["repeated skus in sku_name.tsv (first name kept)"] = duplicate_names
    result = common.ConversionResult(
        dataset="bestbuy", output_dir=os.path.abspath(output_dir),
        counts={"source clicks": rows, "items": n_items, "users": n_users,
                "interactions": n_inter},
        skipped=skipped, mapping=__doc__.strip().splitlines(),
        prepare_flags=["--split=time"], has_users=True)
    result.write_json()
    return result

"""Home Depot product search relevance (Kaggle 2016, train.csv) -> the three-file format.

Mapping (train.csv is latin-1; the output is UTF-8 of the latin-1 decoded text, exactly what
`pd.read_csv(..., encoding='latin-1')` gives, so the dashboard's md5 split rule applies as is):
  items.tsv         item_id = product_uid, title = product_title (the first title seen for a
                    product_uid; the file has 24 rows whose title differs from an earlier row
                    of the same product, counted under "title conflicts")
  impressions.tsv   sessions for pairwise ranking (dpsr prepare-sessions): session_id = query =
                    search_term, item_id = product_uid, label = relevance - 1 (every judged
                    pair, the middle grades included: a session's label order is relevance)
  interactions.tsv  query = search_term, item_id = product_uid, no user, no timestamp,
                    label = positive if relevance >= 2.33, negative if relevance <= 1.67,
                    the pair is skipped (counted) for 1.67 < relevance < 2.33;
                    gain = relevance - 1 (two decimals), so relevance >= 2.67 <=> gain >= 1.67
No users file. Prepare with --eval_min_gain=1.67 (relevant = relevance >= 2.67, graded gain =
relevance - 1: the dashboard protocol) and the default query-hash split.
"""
import csv
import os

from dpsr_tf.data.converters import common
from dpsr_tf.data.readers import write_table

POSITIVE_MIN = 2.33
NEGATIVE_MAX = 1.67
_EPS = 1e-6
IMPRESSIONS_TSV = "impressions.tsv"


def convert(input_dir: str, output_dir: str) -> common.ConversionResult:
    path = common.require_file(input_dir, "train.csv")
    titles = {}
    conflicts = 0
    interactions = []
    impressions = []
    skipped_middle = 0
    rows = 0
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            rows += 1
            uid, title = row["product_uid"], row["product_title"]
            if uid not in titles:
                titles[uid] = title
            elif titles[uid] != title:
                conflicts += 1
            relevance = float(row["relevance"])
            query = common.tsv_cell(row["search_term"])
            impressions.append((query, query, uid, f"{relevance - 1.0:.2f}"))
            if relevance >= POSITIVE_MIN - _EPS:
                label = "positive"
            elif relevance <= NEGATIVE_MAX + _EPS:
                label = "negative"
            else:
                skipped_middle += 1
                continue
            interactions.append((common.tsv_cell(row["search_term"]), uid, label,
                                 f"{relevance - 1.0:.2f}"))
    os.makedirs(output_dir, exist_ok=True)
    n_items = write_table(os.path.join(output_dir, common.ITEMS_TSV), ["item_id", "title"],
                          ((uid, common.tsv_cell(t)) for uid, t in titles.items()))
    n_inter = write_table(os.path.join(output_dir, common.INTERACTIONS_TSV),
                          ["query", "item_id", "label", "gain"], interactions)
    n_impr = write_table(os.path.join(output_dir, IMPRESSIONS_TSV),
                         ["session_id", "query", "item_id", "label"], impressions)
    result = common.ConversionResult(
        dataset="home_depot", output_dir=os.path.abspath(output_dir),
        counts={"source rows": rows, "items": n_items, "interactions": n_inter,
                "impressions": n_impr,
                "title conflicts (first title kept)": conflicts},
        skipped={f"pairs with {NEGATIVE_MAX} < relevance < {POSITIVE_MIN} (neither positive "
                 f"nor negative)": skipped_middle},
        mapping=__doc__.strip().splitlines(),
        prepare_flags=["--eval_min_gain=1.67"])
    result.write_json()
    return result

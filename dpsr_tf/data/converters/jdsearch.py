"""JDsearch official sample (JD.com personalized product search, SIGIR 2023) -> three files.

JD's own layout: product_meta_data*.txt (wid, name, brand_id, brand_name, cate_id_1..4,
cate_name_1..4, shop_id; text = anonymised term ids joined by \\x18) and
user_behavior_data*.txt (one line per user: the test query, candidate_wid_list,
candidate_label_list 0/1/2/3 = none/click/cart/purchase, history_qry_list (-1 = query-less),
history_wid_list, history_type_list CLICK/CART/ORD/FLW, history_time_list = intervals between
behaviours, the first 0, one longer than the history: the last interval leads to the test
query). Lists are joined by '_'.
Mapping:
  items.tsv         item_id = wid, title = name's term ids joined by spaces, brand = brand_id,
                    category = cate_id_4, category_1..3 = cate_id_1..3, shop = shop_id
  users.tsv         user_id = "jd_user_<line>" (line of the behaviour file; no profile)
  interactions.tsv  one row per history behaviour that has a query: query = its term ids
                    joined by spaces, label = click, gain = 1 click/follow, 2 cart, 3 purchase;
                    plus one row per test candidate with label > 0: label = click, gain = label;
                    timestamp = running sum of the intervals (seconds from the user's first
                    behaviour; only comparable within a user), session = "jd_user_<line>"
Skipped (counted): query-less history behaviours, test candidates with label 0 (shown, not
interacted: impressions, not human negatives), behaviours on wids absent from the product file.
The sample has 3 users: a schema fixture, not a benchmark.
"""
import os

from dpsr_tf.data.converters import common
from dpsr_tf.data.readers import write_table

_TERM_SEP = "\x18"
_GAIN = {"CLICK": 1, "FLW": 1, "CART": 2, "ORD": 3}


def _find(input_dir: str, stem: str) -> str:
    for name in (f"{stem}.txt", f"{stem}_sample.txt"):
        if os.path.isfile(os.path.join(input_dir, name)):
            return os.path.join(input_dir, name)
    return common.require_file(input_dir, f"{stem}_sample.txt")


def _text(terms: str) -> str:
    return " ".join(t for t in terms.split(_TERM_SEP) if t)


def convert(input_dir: str, output_dir: str) -> common.ConversionResult:
    meta_path = _find(input_dir, "product_meta_data")
    behaviour_path = _find(input_dir, "user_behavior_data")
    items = {}
    with open(meta_path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            row = dict(zip(header, line.split("\t")))
            items.setdefault(row["wid"], (row["wid"], _text(row["name"]), row["brand_id"],
                                          row["cate_id_4"], row["cate_id_1"], row["cate_id_2"],
                                          row["cate_id_3"], row["shop_id"]))
    users, interactions = [], []
    skipped = {"query-less history behaviours": 0,
               "test candidates with label 0 (impressions)": 0,
               "behaviours on wids missing from the product file": 0}
    with open(behaviour_path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            row = dict(zip(header, line.split("\t")))
            user = f"jd_user_{line_no}"
            users.append((user,))
            times, elapsed = [], 0
            for interval in row["history_time_list"].split("_"):
                elapsed += int(interval)
                times.append(elapsed)
            for query, wid, kind, when in zip(row["history_qry_list"].split("_"),
                                              row["history_wid_list"].split("_"),
                                              row["history_type_list"].split("_"), times):
                if query == "-1":
                    skipped["query-less history behaviours"] += 1
                elif wid not in items:
                    skipped["behaviours on wids missing from the product file"] += 1
                else:
                    interactions.append((_text(query), user, wid, "click", str(when), user,
                                         str(_GAIN.get(kind, 1))))
            test_query = _text(row["query"])
            for wid, label in zip(row["candidate_wid_list"].split("_"),
                                  row["candidate_label_list"].split("_")):
                grade = int(float(label))
                if grade <= 0:
                    skipped["test candidates with label 0 (impressions)"] += 1
                elif wid not in items:
                    skipped["behaviours on wids missing from the product file"] += 1
                else:
                    interactions.append((test_query, user, wid, "click", str(times[-1]), user,
                                         str(grade)))
    os.makedirs(output_dir, exist_ok=True)
    n_items = write_table(os.path.join(output_dir, common.ITEMS_TSV),
                          ["item_id", "title", "brand", "category", "category_1", "category_2",
                           "category_3", "shop"], items.values())
    n_users = write_table(os.path.join(output_dir, common.USERS_TSV), ["user_id"], users)
    n_inter = write_table(os.path.join(output_dir, common.INTERACTIONS_TSV),
                          ["query", "user_id", "item_id", "label", "timestamp", "session",
                           "gain"], interactions)
    result = common.ConversionResult(
        dataset="jdsearch", output_dir=os.path.abspath(output_dir),
        counts={"items": n_items, "users": n_users, "interactions": n_inter},
        skipped=skipped, mapping=__doc__.strip().splitlines(), prepare_flags=[],
        has_users=True)
    result.write_json()
    return result

"""MovieLens 100K (as shipped in recbole 1.2.1) -> the three-file format.

MovieLens has ratings, not searches; this converter makes it a recommendation-style retrieval
check in which the query is the genre:
  items.tsv         item_id = item_id, title = movie_title, release_year, genre = the first
                    genre listed (categorical columns)
  users.tsv         user_id, age_bucket (MovieLens-1M buckets: under 18, 18-24, 25-34, 35-44,
                    45-49, 50-55, 56+), gender (M/F), occupation; zip_code is not used
  interactions.tsv  query = the movie's first genre, lower-cased ("comedy", "sci-fi"),
                    user_id, item_id, timestamp (seconds),
                    label = positive if rating >= 4, negative if rating <= 2; rating 3 is
                    skipped (counted); gain = rating - 3 for positives, 0 for negatives
With ~19 distinct queries a query-hash split would hold out whole genres: prepare with
--split=time (the latest 10% of ratings are eval).
"""
import os

from dpsr_tf.data.converters import common
from dpsr_tf.data.readers import write_table

_AGE_BUCKETS = ((18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"),
                (56, "50-55"))


def age_bucket(age: int) -> str:
    for limit, name in _AGE_BUCKETS:
        if age < limit:
            return name
    return "56+"


def _rows(path):
    with open(path, encoding="utf-8") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        for line in f:
            line = line.rstrip("\n")
            if line:
                yield dict(zip(header, line.split("\t")))


def convert(input_dir: str, output_dir: str) -> common.ConversionResult:
    item_path = common.require_file(input_dir, "ml-100k.item")
    user_path = common.require_file(input_dir, "ml-100k.user")
    inter_path = common.require_file(input_dir, "ml-100k.inter")
    items, genre_of = [], {}
    for row in _rows(item_path):
        genre = (row["class"].split() or [""])[0]
        genre_of[row["item_id"]] = genre
        items.append((row["item_id"], common.tsv_cell(row["movie_title"]), row["release_year"],
                      genre))
    users = [(row["user_id"], age_bucket(int(row["age"])), row["gender"], row["occupation"])
             for row in _rows(user_path)]
    interactions = []
    skipped_neutral = rows = 0
    for row in _rows(inter_path):
        rows += 1
        rating = int(float(row["rating"]))
        if rating >= 4:
            label, gain = "positive", str(rating - 3)
        elif rating <= 2:
            label, gain = "negative", "0"
        else:
            skipped_neutral += 1
            continue
        query = genre_of.get(row["item_id"], "").lower()
        interactions.append((query, row["user_id"], row["item_id"], label,
                             str(int(float(row["timestamp"]))), gain))
    os.makedirs(output_dir, exist_ok=True)
    n_items = write_table(os.path.join(output_dir, common.ITEMS_TSV),
                          ["item_id", "title", "release_year", "genre"], items)
    n_users = write_table(os.path.join(output_dir, common.USERS_TSV),
                          ["user_id", "age_bucket", "gender", "occupation"], users)
    n_inter = write_table(os.path.join(output_dir, common.INTERACTIONS_TSV),
                          ["query", "user_id", "item_id", "label", "timestamp", "gain"],
                          interactions)
    result = common.ConversionResult(
        dataset="movielens_100k", output_dir=os.path.abspath(output_dir),
        counts={"source ratings": rows, "items": n_items, "users": n_users,
                "interactions": n_inter},
        skipped={"ratings of 3 (neither positive nor negative)": skipped_neutral},
        mapping=__doc__.strip().splitlines(), prepare_flags=["--split=time"], has_users=True)
    result.write_json()
    return result

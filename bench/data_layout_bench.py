"""Bytes on disk: the three-file layout against a flat layout that repeats every feature in every
interaction (DPSR §5.1.2: the three-file layout shrank the paper's training data to 10%).

  PYTHONPATH=. python bench/data_layout_bench.py --three_files=DIR --layout=LAYOUT_DIR \
      [--flat_sample=200000]

Compares, for one dataset:
  text:   items+users+interactions TSV  vs  one flat TSV (query, user profile, item id, title,
          item columns, label, timestamp per interaction), written here and measured exactly;
  binary: the prepared layout (tables + 24-byte records)  vs  a flat TFRecord of
          tf.train.Example per interaction carrying query tokens, item tokens, item and user
          categorical ids, history and label (what a pipeline without the join would read).
          Written in full when the split has <= --flat_sample interactions, else a uniform
          sample of that many is written and bytes/example extrapolated (stated in the output).
"""
import argparse
import csv
import os
import sys
import tempfile
import time

import numpy as np


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def _read_table(path, key):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        k = header.index(key)
        rest = [i for i in range(len(header)) if i != k]
        return [header[i] for i in rest], {row[k]: "\t".join(row[i] for i in rest)
                                           for row in reader}


def flat_tsv_bytes(three_files, out_path):
    """Writes the flat TSV join of the three files; returns (bytes, rows, seconds)."""
    start = time.monotonic()
    item_cols, items = _read_table(os.path.join(three_files, "items.tsv"), "item_id")
    users_path = os.path.join(three_files, "users.tsv")
    user_cols, users = (_read_table(users_path, "user_id") if os.path.exists(users_path)
                        else ([], {}))
    empty_user = "\t".join("" for _ in user_cols)
    rows = 0
    with open(os.path.join(three_files, "interactions.tsv"), encoding="utf-8") as src, \
            open(out_path, "w", encoding="utf-8") as out:
        header = src.readline().rstrip("\n").split("\t")
        qi, ii = header.index("query"), header.index("item_id")
        ui = header.index("user_id") if "user_id" in header else -1
        other = [i for i in range(len(header)) if i not in (qi, ii, ui)]
        out.write("\t".join(["query", "user_id", *user_cols, "item_id", *item_cols,
                             *(header[i] for i in other)]) + "\n")
        lines = []
        for line in src:
            f = line.rstrip("\n").split("\t")
            user = f[ui] if ui >= 0 else ""
            profile = users.get(user, empty_user) if user_cols else None
            parts = [f[qi], user] + ([profile] if user_cols else []) + [f[ii], items[f[ii]]]
            parts += [f[i] for i in other]
            lines.append("\t".join(parts))
            rows += 1
            if len(lines) == 65536:
                out.write("\n".join(lines) + "\n")
                lines = []
        if lines:
            out.write("\n".join(lines) + "\n")
    return os.path.getsize(out_path), rows, time.monotonic() - start


def flat_tfrecord_bytes(layout_dir, out_path, sample):
    """Writes tf.train.Examples that repeat all features; returns (bytes, written, total)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from dpsr_tf.data import layout as L  # pylint: disable=import-outside-toplevel
    spec = L.load_layout_spec(layout_dir)
    items = L.load_item_table(spec)
    users = L.load_user_table(spec)
    q_ids, q_splits = L.load_query_tokens(spec)
    h_items, h_splits = L.load_user_histories(spec)
    records = np.concatenate([L.read_records(spec, s) for s in spec.splits])
    total = len(records)
    if total > sample:
        records = records[np.linspace(0, total - 1, sample).astype(np.int64)]

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    with tf.io.TFRecordWriter(out_path) as writer:
        for r in records:
            q, i, u = int(r["query_row"]), int(r["item_row"]), int(r["user_row"])
            feats = {"query_tokens": ints(q_ids[q_splits[q]:q_splits[q + 1]]),
                     "item_tokens": ints(items.tokens(i)),
                     "item_row": ints([i]),
                     "label": tf.train.Feature(float_list=tf.train.FloatList(
                         value=[0.0 if r["label_kind"] == 2 else 1.0]))}
            for j, name in enumerate(spec.item_features):
                feats[f"item_{name}"] = ints([items.features[i, j]])
            for j, name in enumerate(spec.user_features):
                feats[f"user_{name}"] = ints([users.features[u, j] if u >= 0 else 0])
            if u >= 0 and spec.history_length:
                lo = h_splits[u]
                end = int(r["history_end"])
                feats["user_history"] = ints(h_items[lo + max(0, end - spec.history_length):
                                                     lo + end])
            writer.write(tf.train.Example(features=tf.train.Features(feature=feats))
                         .SerializeToString())
    return os.path.getsize(out_path), len(records), total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--three_files", required=True)
    parser.add_argument("--layout", required=True)
    parser.add_argument("--flat_sample", type=int, default=200_000)
    parser.add_argument("--tmp", default=tempfile.gettempdir())
    args = parser.parse_args()
    three = sum(_size(os.path.join(args.three_files, f))
                for f in ("items.tsv", "users.tsv", "interactions.tsv")
                if os.path.exists(os.path.join(args.three_files, f)))
    tmp = tempfile.mkdtemp(dir=args.tmp)
    flat_path = os.path.join(tmp, "flat.tsv")
    flat, rows, secs = flat_tsv_bytes(args.three_files, flat_path)
    os.remove(flat_path)
    layout = _size(args.layout)
    rec_path = os.path.join(tmp, "flat.tfrecord")
    rec_bytes, written, total = flat_tfrecord_bytes(args.layout, rec_path, args.flat_sample)
    os.remove(rec_path)
    os.rmdir(tmp)
    flat_rec = rec_bytes * total / written
    note = "exact" if written == total else f"extrapolated from a uniform sample of {written:,}"
    print(f"interactions: {rows:,} (flat TSV join written in {secs:.0f} s)")
    print("| representation | three-file | flat | three-file / flat |")
    print("|---|---:|---:|---:|")
    print(f"| text (TSV) | {three / 1e6:,.1f} MB | {flat / 1e6:,.1f} MB | {three / flat:.1%} |")
    print(f"| binary (prepared layout vs flat tf.train.Example TFRecord, {note}) | "
          f"{layout / 1e6:,.1f} MB | {flat_rec / 1e6:,.1f} MB | {layout / flat_rec:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

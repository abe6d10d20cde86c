"""Tokenizer throughput: the DPSR C++ tokenizer (pybind11 and TF op) against the alternatives.

Side by side in one run, on the same strings (Home Depot queries and product titles from
../shared/datasets when present, else seeded synthetic text):
  - dpsr pybind11   Tokenizer.tokenize (batch API, GIL released)
  - dpsr TF op      Dpsr>Tokenize inside a tf.function
  - stock TF        the same feature kinds from stock ops: tf.strings.lower, regex_replace,
                    split, ngrams (words and letter trigrams), to_hash_bucket_fast
  - HF WordPiece    HuggingFace `tokenizers` WordPiece (trained offline on the same corpus)

    python bench/tokenizer_bench.py [--batch 1024] [--repeats 5]

Prints a Markdown table; the ratios (not the absolute numbers) are what carries across machines.
"""
import argparse
import csv
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DATA = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "home_depot", "train.csv")


def load_texts():
    if os.path.exists(DATA):
        with open(DATA, encoding="latin-1", newline="") as f:
            rows = list(csv.DictReader(f))
        queries = sorted({r["search_term"] for r in rows})
        titles = sorted({r["product_title"] for r in rows})
        return queries + titles, f"Home Depot: {len(queries)} queries + {len(titles)} titles"
    rng = np.random.default_rng(0)
    words = ["drill", "cordless", "20v", "lithium", "ion", "saw", "blade", "white", "paint",
             "gallon", "苹果", "手机", "壳", "led", "bulb", "60w", "outdoor", "light"]
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 12))) for _ in range(60000)]
    return texts, "synthetic: 60000 texts"


def stock_tf_features(tf, num_buckets):
    """The DPSR feature kinds from stock TF string ops (a user's alternative to our op)."""
    cjk = r"([\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}])"

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def featurize(texts):
        t = tf.strings.lower(texts, encoding="utf-8")
        t = tf.strings.regex_replace(t, r"[^\p{L}\p{N}]+", " ")
        t = tf.strings.regex_replace(t, cjk, r" \1 ")
        tokens = tf.strings.split(t)                                   # [B, (T)]
        unigrams = tf.strings.join(["w:", tokens])
        bigrams = tf.strings.join(["ww:", tf.strings.ngrams(tokens, 2, separator=" ")])
        marked = tf.strings.join(["#", tokens, "#"])
        chars = tf.strings.unicode_split(marked, "UTF-8")                # [B, (T), (C)]
        trigrams = tf.strings.ngrams(chars, 3, separator="").merge_dims(1, 2)
        trigrams = tf.strings.join(["t:", trigrams])
        keys = tf.concat([unigrams, bigrams, trigrams], axis=1)
        return tf.strings.to_hash_bucket_fast(keys, num_buckets)

    return featurize


def wordpiece(texts):
    from tokenizers import Tokenizer as HFTokenizer  # pylint: disable=g-import-not-at-top
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    tok = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=30000,
                                                             special_tokens=["[UNK]"],
                                                             show_progress=False))
    return tok


def time_it(fn, batches, repeats):
    fn(batches[0])  # warm-up (tracing, caches)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            fn(b)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from dpsr_tf.tokenization import Tokenizer, TokenizerConfig, tokenize_op

    texts, source = load_texts()
    n = len(texts)
    config = TokenizerConfig()
    batches = [texts[i:i + args.batch] for i in range(0, n, args.batch)]
    tensors = [tf.constant(b) for b in batches]
    tok = Tokenizer(config)
    op_fn = tf.function(lambda x: tokenize_op.tokenize(x, config).values,
                        input_signature=[tf.TensorSpec([None], tf.string)])
    stock = stock_tf_features(tf, config.num_buckets)
    hf = wordpiece(texts)

    ids, _ = tok.tokenize(texts)
    stock_count = sum(int(tf.size(stock(t)).numpy()) for t in tensors)
    contenders = [
        ("dpsr pybind11 batch", lambda b: tok.tokenize(b), batches),
        ("dpsr Dpsr>Tokenize op", lambda t: op_fn(t).numpy(), tensors),
        ("stock TF string ops", lambda t: stock(t).numpy(), tensors),
        ("HF tokenizers WordPiece", lambda b: hf.encode_batch(b), batches),
    ]
    results = [(name, n / time_it(fn, data, args.repeats)) for name, fn, data in contenders]
    op_rate = results[1][1]
    print(f"# tokenizer throughput — {source}; batch {args.batch}; median of {args.repeats}")
    print(f"# {platform.node()} {os.cpu_count()} cores, TF {tf.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"# features per text: dpsr {len(ids) / n:.1f}, stock TF {stock_count / n:.1f}")
    print("| tokenizer | texts/s | op speed-up over it |")
    print("|---|---:|---:|")
    for name, rate in results:
        print(f"| {name} | {rate:,.0f} | {op_rate / rate:.2f}x |")


if __name__ == "__main__":
    main()

"""Seconds per training step of `dpsr train --text_encoder=pretrained` on a layout, and the
token rows its encoder calls see per step.

  PYTHONPATH=. nice python bench/pretrained_step_time.py --layout_dir=L [--batch_size=64] \
      [--steps=3] [--warmup=1] [--bert_from=path/to/bert.py] [--max_human_negatives=8]

Builds the model_fn's TRAIN graph on the layout's own training batches (as `dpsr train` joins
them: pseudo-queries, human negatives, titles), fills the encoder with the installed
all-MiniLM-L6-v2, runs --warmup steps, then times --steps steps (no checkpoints, no
evaluation). --bert_from runs another copy of dpsr_tf/model/pretrained/bert.py (an older commit's,
`git show C:dpsr_tf/model/pretrained/bert.py > F`) for a before/after comparison. Prints the
mean texts, padded tokens and real tokens per step of each encoder call over --count_batches
batches, then one line: layout, bert, s/step, steps/s.
"""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tensorflow as tf  # noqa: E402

from dpsr_tf.data.layout import load_layout_spec  # noqa: E402
from dpsr_tf.model.config import ModelConfig  # noqa: E402
from dpsr_tf.model.model_fn import dpsr_model_fn  # noqa: E402
from dpsr_tf.model.pretrained import encoder as pretrained_encoder  # noqa: E402
from dpsr_tf.training import driver, tf_config  # noqa: E402
from dpsr_tf.training.config import TrainConfig  # noqa: E402

CALLS = {"query": ("query",), "items": ("item_text", "neg_item_text"),
         "human negatives": ("human_negative_item_text",)}


def _count(train_fn, model, batches: int) -> None:
    from dpsr_tf.tokenization.wordpiece import WordPieceTokenizer  # pylint: disable=import-outside-toplevel
    with tf.Graph().as_default():
        tokenizer = WordPieceTokenizer(model.vocab_file, model.lower_case, model.max_seq_length)
        strings = tf.compat.v1.placeholder(tf.string, [None])
        mask_of = tokenizer(strings)[1]
        features = tf.compat.v1.data.make_one_shot_iterator(train_fn()).get_next()
        with tf.compat.v1.Session() as session:
            totals = {name: np.zeros(3) for name in CALLS}
            for _ in range(batches):
                batch = session.run(features)
                for name, keys in CALLS.items():
                    texts = np.concatenate([batch[k] for k in keys if k in batch] or [[]])
                    if len(texts):
                        mask = session.run(mask_of, {strings: texts})
                        totals[name] += [len(texts), mask.size, mask.sum()]
    for name, (texts, padded, real) in totals.items():
        print(f"  {name}: {texts / batches:.0f} texts, {padded / batches:,.0f} padded tokens, "
              f"{real / batches:,.0f} real tokens per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout_dir", required=True)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--count_batches", type=int, default=10)
    parser.add_argument("--bert_from", default="")
    parser.add_argument("--max_human_negatives", type=int, default=8,
                        help="as `dpsr train --max_human_negatives` (8: the default)")
    args = parser.parse_args()
    if args.bert_from:
        spec = importlib.util.spec_from_file_location("bert_under_test", args.bert_from)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        pretrained_encoder.BertEncoder = module.BertEncoder
    layout = load_layout_spec(args.layout_dir)
    cfg = ModelConfig(text_encoder="pretrained", embedding_dim=384,
                      max_human_negatives=args.max_human_negatives).resolved(0).with_graph(layout)
    # model_dir: never written (no Estimator here).
    train = TrainConfig(layout_dir=args.layout_dir, model_dir="unused", batch_size=args.batch_size,
                        train_steps=100, seed=0)
    train_fn, _ = driver.default_input_fns(cfg, train, tf_config.from_env())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        features = tf.compat.v1.data.make_one_shot_iterator(train_fn()).get_next()
        spec = dpsr_model_fn(features, None, tf.estimator.ModeKeys.TRAIN,
                             {"model_config": cfg, "layout_spec": layout,
                              "batch_size": args.batch_size, "seed": 0})
        encoder = pretrained_encoder.graph_encoder(cfg.pretrained_dir,
                                                   cfg.pretrained_trainable_layers)
        encoder.bert.build_initializer()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run([tf.compat.v1.global_variables_initializer(),
                         tf.compat.v1.local_variables_initializer(),
                         tf.compat.v1.tables_initializer()])
            encoder.initialize(session)
            for _ in range(args.warmup):
                session.run(spec.train_op)
            start = time.monotonic()
            for _ in range(args.steps):
                session.run(spec.train_op)
            seconds = (time.monotonic() - start) / args.steps
    if args.count_batches:
        _count(train_fn, encoder.model, args.count_batches)
    print(f"{args.layout_dir}\tbert {args.bert_from or 'as checked out'}\t{seconds:.2f} s/step"
          f"\t{1 / seconds:.3f} steps/s over {args.steps} steps")


if __name__ == "__main__":
    main()

"""Training throughput of DPSR (tf.estimator) beside a TensorFlow Recommenders two-tower model of
the same size, on the same Home Depot batches, in one run; then Recall@100 (and the rest of the
dashboard metrics) of each on the Home Depot test split.

Both models: one 2^20 x 64 n-gram table shared by the two towers (ids from the same layout),
mean-pooled, then a 256-unit ReLU layer and a 64-d linear layer per tower, L2-normalized;
AdaGrad (DPSR at the paper's 0.01, TFRS at 0.05, the rate our own in-batch softmax trains best
with on Home Depot); batch 64; the same number of steps over the same tf.data input
(dpsr_tf.data.pipeline). DPSR trains with its hinge loss over mixed negatives (alpha 0.5,
64 negatives); TFRS with its Retrieval task (in-batch softmax, temperature 0.05), which is what
a user picking TFRS would run. Throughput = examples/s between local step 200 and the last
step (start-up and graph building excluded).

    python bench/train_tfrs_compare.py [--layout_dir L] [--steps 20000]
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("TF_CONFIG", None)

import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from dpsr_tf.data import layout as layout_lib  # noqa: E402
from dpsr_tf.data import pipeline  # noqa: E402
from dpsr_tf.evaluation import evaluate as evaluate_lib  # noqa: E402
from dpsr_tf.evaluation.metrics import summarize  # noqa: E402
from dpsr_tf.model.config import ModelConfig  # noqa: E402
from dpsr_tf.model.model_dir import write_resolved_config  # noqa: E402
from dpsr_tf.training import driver  # noqa: E402
from dpsr_tf.training.config import TrainConfig  # noqa: E402
from dpsr_tf.model.progress import quiet_tf_logging  # noqa: E402

WARMUP = 200


class _Timer(tf.compat.v1.train.SessionRunHook):
    def __init__(self):
        self.count, self.t_start, self.t_end = 0, None, None

    def after_run(self, run_context, run_values):
        self.count += 1
        if self.count == WARMUP:
            self.t_start = time.perf_counter()
        self.t_end = time.perf_counter()


def run_dpsr(layout_dir, spec, args, work):
    cfg = ModelConfig(learning_rate=args.dpsr_learning_rate, embedding_partitions=1)
    train = TrainConfig(layout_dir=layout_dir, model_dir=os.path.join(work, "dpsr"),
                        batch_size=args.batch, train_steps=args.steps,
                        save_checkpoints_steps=args.steps, log_step_count_steps=10 ** 6)
    write_resolved_config(train.model_dir, cfg, spec)
    estimator = driver.make_estimator(cfg, train, spec)
    timer = _Timer()
    estimator.train(pipeline.make_train_input_fn(layout_dir, batch_size=args.batch,
                                                 num_random_negatives=32, seed=0),
                    max_steps=args.steps, hooks=[timer])
    rate = (timer.count - WARMUP) * args.batch / (timer.t_end - timer.t_start)
    metrics = evaluate_lib.evaluate_model(train.model_dir, log=lambda _: None)
    return rate, metrics


class TwoTower(tfrs.Model):
    """The TFRS two-tower model of the same size as DPSR's default (m = 1)."""

    def __init__(self, vocab, lr):
        super().__init__()
        self.tokens = tf.keras.layers.Embedding(vocab, 64)
        self.query_mlp = tf.keras.Sequential([tf.keras.layers.Dense(256, activation="relu"),
                                              tf.keras.layers.Dense(64)])
        self.item_mlp = tf.keras.Sequential([tf.keras.layers.Dense(256, activation="relu"),
                                             tf.keras.layers.Dense(64)])
        self.task = tfrs.tasks.Retrieval(temperature=0.05)
        self.lr = lr

    def _bag(self, ids):
        rows = self.tokens(ids)
        return tf.math.divide_no_nan(tf.reduce_sum(rows, axis=1),
                                     tf.cast(ids.row_lengths(), tf.float32)[:, None])

    def embed_queries(self, ids):
        return tf.math.l2_normalize(self.query_mlp(self._bag(ids)), axis=-1)

    def embed_items(self, ids):
        return tf.math.l2_normalize(self.item_mlp(self._bag(ids)), axis=-1)

    def compute_loss(self, features, training=False):
        return self.task(self.embed_queries(features["query_tokens"]),
                         self.embed_items(features["item_tokens"]),
                         sample_weight=features["label"], compute_metrics=False)


class _KerasTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count, self.t_start, self.t_end = 0, None, None

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1
        if self.count == WARMUP:
            self.t_start = time.perf_counter()
        self.t_end = time.perf_counter()


class _TfrsScorer(evaluate_lib.EmbeddingScorer):
    """EmbeddingScorer over embeddings computed by the TFRS model (one head)."""

    def __init__(self, model, spec, eval_set, pairs):  # pylint: disable=super-init-not-called
        def ragged(ids, splits):
            return tf.RaggedTensor.from_row_splits(tf.constant(ids, tf.int64),
                                                   tf.constant(splits, tf.int64))

        def batched(fn, ids, splits, n, size=4096):
            out = []
            for lo in range(0, n, size):
                hi = min(n, lo + size)
                a, b = int(splits[lo]), int(splits[hi])
                out.append(fn(ragged(ids[a:b], splits[lo:hi + 1] - a)).numpy())
            return np.concatenate(out)

        self.beta = 0.0
        items = layout_lib.load_item_table(spec)
        self.item_emb = batched(model.embed_items, items.token_ids, items.token_splits,
                                spec.num_items)
        tok, spl, _, _ = evaluate_lib.request_inputs(
            spec, eval_set.query_rows, eval_set.user_rows, eval_set.history_ends)
        self.request_emb = batched(model.embed_queries, tok, spl, len(eval_set))[:, None, :]
        q, u, h, self.pair_request = evaluate_lib._unique_requests(  # pylint: disable=protected-access
            pairs["query_row"], pairs["user_row"], pairs["history_end"])
        tok, spl, _, _ = evaluate_lib.request_inputs(spec, q, u, h)
        self.pair_query_emb = batched(model.embed_queries, tok, spl, len(q))[:, None, :]


def run_tfrs(layout_dir, spec, args):
    tf.random.set_seed(0)
    keys = ("query_tokens", "item_tokens", "label")
    ds = pipeline.make_train_input_fn(layout_dir, batch_size=args.batch,
                                      num_random_negatives=1, seed=0)()
    ds = ds.map(lambda f: {k: f[k] for k in keys})
    model = TwoTower(spec.token_id_space, args.tfrs_learning_rate)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(args.tfrs_learning_rate,
                                                        initial_accumulator_value=0.1))
    timer = _KerasTimer()
    model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[timer])
    rate = (timer.count - WARMUP) * args.batch / (timer.t_end - timer.t_start)
    cfg = evaluate_lib.EvalConfig()
    eval_set, pairs = evaluate_lib.load_split(spec, cfg)
    scorer = _TfrsScorer(model, spec, eval_set, pairs)
    return rate, evaluate_lib.evaluate_scorer(scorer, spec, eval_set, pairs, cfg,
                                              log=lambda _: None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout_dir")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dpsr_learning_rate", type=float, default=0.01)
    parser.add_argument("--tfrs_learning_rate", type=float, default=0.05)
    args = parser.parse_args()
    quiet_tf_logging()
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.WARN)
    with tempfile.TemporaryDirectory() as work:
        if args.layout_dir:
            layout_dir = args.layout_dir
        else:
            sys.path.insert(0, os.path.join(ROOT, "bench"))
            from train_ps_aggregation import home_depot_layout  # pylint: disable=import-outside-toplevel
            layout_dir = home_depot_layout(work)
        spec = layout_lib.load_layout_spec(layout_dir)
        dpsr_rate, dpsr_metrics = run_dpsr(layout_dir, spec, args, work)
        tfrs_rate, tfrs_metrics = run_tfrs(layout_dir, spec, args)
    print(f"\nHome Depot train split, batch {args.batch}, {args.steps} steps, AdaGrad "
          f"lr {args.dpsr_learning_rate} (DPSR) / {args.tfrs_learning_rate} (TFRS); "
          f"{platform.node()}, {os.cpu_count()} cores, "
          f"TF {tf.__version__}, TFRS {tfrs.__version__}\n")
    print("| model | examples/s | ratio | Recall@100 (test) | other test metrics |")
    print("|---|---:|---:|---:|---|")
    print(f"| DPSR (tf.estimator, hinge) | {dpsr_rate:,.0f} | {dpsr_rate / tfrs_rate:.2f}x | "
          f"{dpsr_metrics['recall@100']:.4f} | {summarize(dpsr_metrics)} |")
    print(f"| TFRS two-tower (Keras fit, Retrieval) | {tfrs_rate:,.0f} | 1.00x | "
          f"{tfrs_metrics['recall@100']:.4f} | {summarize(tfrs_metrics)} |")


if __name__ == "__main__":
    main()

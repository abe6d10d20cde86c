"""`dpsr prepare` as an Apache Beam pipeline: the single-process layout, from many workers.

The pipeline makes the same decisions as dpsr_tf/data/prepare.py with the same functions
(dpsr_tf/data/rows.py per row and per id, pseudo_queries.item_pseudo_queries per item,
derived_tables.user_histories per user and human_negative_table per query,
split.is_eval_query per query, the C++ tokenizer per text), and numbers rows the same way
(first appearance in file order, by position ranges: numbering.py), so the tables and every
example are those of the single process. Only the order of train and pseudo records on disk
differs: the single process shuffles them with numpy's permutation of `seed`, here they are
ordered by a seeded hash of their position (a shuffle that needs no global view). Eval records
keep file order.

Bulk rows never enter a Beam PCollection: stages hand each other partitioned files under
`BeamSettings.temp_dir` (files.py), and Beam carries only task descriptors and small metadata
(stages.py), so a worker holds one partition or range, and the runner a few hundred small
elements per stage, whatever the input size.

Not supported here (they need a global view the single process has for free): --build_vocab
(use the vocabulary of a first single-process run, or --vocab_file), --max_train_queries, and
--split=time without --split_time.
"""
import dataclasses
import math
import os
import shutil
import time
import uuid
from typing import Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import layout_writer
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import rows as rows_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.beam import files as files_lib
from dpsr_tf.data.beam import layout_assembly
from dpsr_tf.data.beam import stages
from dpsr_tf.data.beam.job import Job, SplitRule
from dpsr_tf.data.readers import ShardedReader

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")
_GZIP_RATIO = 4          # a .gz input is counted as this many times its size


@dataclasses.dataclass(frozen=True)
class BeamSettings:
    """How the Beam prepare cuts its work (the --beam_* flags of `dpsr prepare`).

    Attributes:
      partition_mb: input megabytes per hash partition: partitions = input size / this (a
        reduce task holds about one partition's rows, a few times their size in memory).
      partitions: a fixed number of hash partitions instead (0 = from partition_mb).
      range_lines: input lines per position range (a numbering task sorts one range).
      temp_dir: where the intermediates go, any Beam filesystem (gs://, hdfs://, s3://): it
        must be reachable from every worker. None = a directory inside the layout being
        built (right for DirectRunner; a cluster needs a shared one).
    """

    partition_mb: float = 16.0
    partitions: int = 0
    range_lines: int = 1 << 17
    temp_dir: Optional[str] = None

    def __post_init__(self):
        if not self.partition_mb > 0:  # NaN too
            raise ValueError(f"beam partition_mb must be > 0, got {self.partition_mb}")
        if self.partitions < 0:
            raise ValueError(f"beam partitions must be >= 0 (0 = from partition_mb), got "
                             f"{self.partitions}")
        if self.range_lines < 1:
            raise ValueError(f"beam range_lines must be >= 1, got {self.range_lines}")


def _num_partitions(settings: BeamSettings, paths: Sequence[str]) -> int:
    if settings.partitions:
        return settings.partitions
    size = sum(os.path.getsize(f) * (_GZIP_RATIO if f.endswith(".gz") else 1) for f in paths)
    return max(1, math.ceil(size / (settings.partition_mb * (1 << 20))))


def _check_supported(config: prepare_lib.PrepareConfig) -> None:
    if config.build_vocab:
        raise prepare_lib.PrepareError(
            "--build_vocab is not supported with a Beam runner (the vocabulary needs every "
            "title and train query in one place); build it once with --runner=InProcess, or "
            "pass --vocab_file")
    if config.max_train_queries:
        raise prepare_lib.PrepareError(
            "--max_train_queries is not supported with a Beam runner; use --runner=InProcess")
    if config.split.method == split_lib.TIME and config.split.time_cutoff is None:
        raise prepare_lib.PrepareError(
            "--split=time with a Beam runner needs --split_time (the cutoff of "
            "--eval_fraction needs every timestamp in one place)")


def prepare_beam(config: prepare_lib.PrepareConfig, runner: str,
                 beam_args: Sequence[str] = (), log: Callable[[str], None] = print,
                 settings: BeamSettings = BeamSettings()) -> layout_lib.LayoutSpec:
    """Writes the layout of `prepare.prepare(config)` with an Apache Beam pipeline.

    Args:
      config: the prepare settings (see _check_supported for the few it refuses).
      runner: one of RUNNERS.
      beam_args: Beam pipeline options ("--direct_num_workers=2", "--project=...", ...).
      log: where the report and progress lines go.
      settings: partitioning and the intermediates' directory.

    Returns:
      The LayoutSpec of the written layout.

    Raises:
      SchemaError, PrepareError: as prepare.prepare, and for unsupported settings.
    """
    if runner not in RUNNERS:
        raise ValueError(f"runner {runner!r}: use one of {RUNNERS}")
    _check_supported(config)
    start = time.monotonic()
    output = os.path.abspath(config.output)
    layout_writer.check_output(output)
    # Headers are checked here, before any worker starts, with the single-process messages.
    readers = {"items": ShardedReader(config.items, schema.ITEMS)}
    if config.users:
        readers["users"] = ShardedReader(config.users, schema.USERS)
    readers["inter"] = ShardedReader(config.interactions, schema.INTERACTIONS)
    for index in range(1, len(readers["inter"].files)):      # every shard's header, up front
        readers["inter"].open(index).close()
    for reader in readers.values():
        reader.close()
    inter_cols = rows_lib.interaction_columns(readers["inter"])
    has_time = inter_cols.timestamp >= 0
    if config.split.method == split_lib.TIME and not has_time:
        raise schema.SchemaError(
            f"{config.interactions}:1: --split=time needs a timestamp column in the "
            f"interactions file; use --split=query_hash")
    auto_users = "users" not in readers and inter_cols.user >= 0
    inter_notes = rows_lib.interaction_notes(readers["inter"], auto_users)
    paths = [f for r in readers.values() for f in r.files]
    partitions = _num_partitions(settings, paths)

    with layout_lib.building(output) as tmp:
        base = (FileSystems.join(settings.temp_dir, f"dpsr-prepare-{uuid.uuid4().hex[:12]}")
                if settings.temp_dir else os.path.join(tmp, "beam"))
        tok_config = config.tokenizer
        if tok_config.vocab_file:
            shutil.copyfile(tok_config.vocab_file, os.path.join(tmp, layout_lib.VOCAB_TXT))
            tok_config = dataclasses.replace(
                tok_config, vocab_file=os.path.join(tmp, layout_lib.VOCAB_TXT))
        job = Job(
            base=base, partitions=partitions, range_lines=settings.range_lines,
            hash_range_bits=max(0, math.ceil(math.log2(partitions))),
            files={k: tuple(r.files) for k, r in readers.items()},
            headers={k: tuple(r.header) for k, r in readers.items()},
            item_cols=rows_lib.table_columns(readers["items"], True),
            user_cols=(rows_lib.table_columns(readers["users"], False)
                       if "users" in readers else None),
            inter_cols=inter_cols, tokenizer=tok_config, pseudo=config.pseudo_queries,
            rule=SplitRule(config.split.method, config.split.modulus, config.split.fold,
                           config.split.time_cutoff),
            seed=config.seed, has_time=has_time, auto_users=auto_users,
            max_examples=config.max_examples, progress_every_s=config.progress_every_s)
        options = PipelineOptions(list(beam_args) + [f"--runner={runner}"])
        log(f"beam: running the prepare pipeline on {runner} "
            f"({' '.join(beam_args) or 'default options'}), {partitions} hash partitions, "
            f"{settings.range_lines:,} lines per range, intermediates in {base}")
        try:
            pipeline_start = time.monotonic()
            p = beam.Pipeline(options=options)
            stages.build(p, job)
            p.run().wait_until_finish()
            meta = files_lib.read_piece(base, *stages.META_PIECE)
            if meta is None:
                raise RuntimeError(f"the pipeline finished without its metadata ({base})")
            log(f"beam: pipeline done in {time.monotonic() - pipeline_start:.1f} s "
                f"({_rows_read(meta)}); joining the pieces")
            log("beam: task seconds " + ", ".join(
                f"{name} {seconds:.1f} ({meta['c/tasks'][name]})"
                for name, seconds in meta.get("c/task_seconds", {}).items()))
            layout_assembly.assemble_layout(config, tmp, base, meta, job, tok_config, inter_notes,
                                            log)
        finally:                   # a shared temp dir keeps nothing, failed or not
            if FileSystems.exists(base):
                FileSystems.delete([base])
    log(f"wrote {output} in {time.monotonic() - start:.1f} s")
    return layout_lib.load_layout_spec(output)


def _rows_read(meta: dict) -> str:
    """'rows read: items N, users N, interactions N' from the merged reports."""
    return "rows read: " + ", ".join(
        f"{name} {meta[f'rep/{kind}'][0]:,}" for kind, name in layout_assembly.REPORT_KINDS
        if f"rep/{kind}" in meta)

"""dpsr prepare: validate items/users/interactions files and write the training layout.

  dpsr prepare --items=items.tsv [--users=users.tsv] --interactions=interactions.tsv \
      --output=layout_dir [--split=query_hash|time] [--history_length=16] [tokenizer flags]
      [--split_fold=F --split_modulus=N] [--max_train_queries=N --seed=S]

--runner=DirectRunner (or DataflowRunner, FlinkRunner, SparkRunner, PortableRunner) writes the
same layout with the Apache Beam pipeline of dpsr_tf/data/beam; Beam's own options go through
--beam_option, repeated (--beam_option=--direct_num_workers=2
--beam_option=--direct_running_mode=multi_processing). The default, InProcess, is one process.

--split_fold=F holds out the queries whose md5 % N == F (cross-validation fold F of N without
rewriting data; `dpsr crossval` runs every fold). --max_train_queries=N keeps N seeded training
queries with all their interactions (a small log cut from a large one); eval is untouched.
--validation_fraction=0.1 (the default) moves a seeded tenth of the training queries into the
validation split that early stopping and the automatic choices read (docs/evaluation.md).

Prints counts and rejected rows by reason with file:line examples; exits 1 with a clear message
on a missing file, a malformed header, a missing required column or too many rejected rows.
"""
import sys

from absl import flags

from dpsr_tf.cli import prepare_flags
from dpsr_tf.data import graph as graph_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib

_OUTPUT = flags.DEFINE_string("output", None, "Layout directory to write.")
_SPLIT = flags.DEFINE_enum("split", split_lib.QUERY_HASH, list(split_lib.METHODS),
                           "query_hash: eval iff md5(query) % split_modulus == split_fold (the "
                           "dashboard protocol); time: the latest interactions are eval.")
_MODULUS = flags.DEFINE_integer("split_modulus", 10, "query_hash: one query in N is eval.")
_FOLD = flags.DEFINE_integer("split_fold", 0,
                             "query_hash: eval iff md5(query) % split_modulus == this, in "
                             "[0, split_modulus) (0 = the dashboard protocol; cross-validation "
                             "runs 0..N-1).")
_SPLIT_TIME = flags.DEFINE_string("split_time", None,
                                  "time: eval iff timestamp >= this (seconds or ISO 8601); "
                                  "default: the latest --eval_fraction of interactions.")
_EVAL_FRACTION = flags.DEFINE_float("eval_fraction", 0.1, "time: fraction for eval.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 5, "Examples per rejection reason.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the train records' order on disk, of the "
                             "--max_train_queries choice and of the validation queries.")
_MAX_TRAIN_QUERIES = flags.DEFINE_integer(
    "max_train_queries", 0, "Keep only this many distinct train queries (seeded by --seed) with "
    "all their interactions; the others' are dropped; eval is untouched. 0 = keep all.")
_PER_SHARD = flags.DEFINE_integer("records_per_shard", 1 << 22, "Interaction records per file.")
IN_PROCESS = "InProcess"
_RUNNER = flags.DEFINE_enum(
    "runner", IN_PROCESS, [IN_PROCESS, "DirectRunner", "DataflowRunner", "FlinkRunner",
                           "SparkRunner", "PortableRunner"],
    "InProcess: one Python process. A Beam runner: the Apache Beam pipeline of "
    "dpsr_tf/data/beam (same layout; docs/data_format.md, 'Preparing on Apache Beam').")
_BEAM_OPTIONS = flags.DEFINE_multi_string(
    "beam_option", [], "A Beam pipeline option for a Beam --runner, repeated, e.g. "
    "--beam_option=--direct_num_workers=2 --beam_option=--direct_running_mode=multi_processing")
_BEAM_PARTITION_MB = flags.DEFINE_float(
    "beam_partition_mb", 16.0, "Beam runner: input megabytes per hash partition of the "
    "intermediates (a worker holds about one partition's rows at a time).")
_BEAM_PARTITIONS = flags.DEFINE_integer(
    "beam_partitions", 0, "Beam runner: a fixed number of hash partitions (0 = from "
    "--beam_partition_mb).")
_BEAM_RANGE_LINES = flags.DEFINE_integer(
    "beam_range_lines", 1 << 17, "Beam runner: input lines per position range (row numbering "
    "sorts one range at a time).")
_BEAM_TEMP_DIR = flags.DEFINE_string(
    "beam_temp_dir", None, "Beam runner: directory of the intermediate files, any Beam "
    "filesystem (gs://, hdfs://, s3://) reachable from every worker; default: inside the "
    "layout being written (fine for DirectRunner).")

_GRAPH = flags.DEFINE_bool(
    "graph", False, "Also write the click graph of the train split into the layout (graph/: "
    "query, item and item-attribute nodes, top neighbours by clicks, two-hop lists) for "
    "--tower=searchgcn (docs/training.md, 'SearchGCN').")
_GRAPH_NEIGHBORS = flags.DEFINE_integer(
    "graph_neighbors", 10, "--graph: most-clicked neighbours kept per node (items also keep "
    "every attribute node).")
_GRAPH_TWO_HOP = flags.DEFINE_integer("graph_two_hop", 10,
                                      "--graph: two-hop nodes kept per query and item.")

flags.mark_flags_as_required(prepare_flags.REQUIRED + ["output"])


def config_from_flags() -> prepare_lib.PrepareConfig:
    cutoff = None
    if _SPLIT_TIME.value is not None:
        cutoff = schema.parse_timestamp(_SPLIT_TIME.value)
        if cutoff is None:
            raise flags.ValidationError(f"--split_time={_SPLIT_TIME.value!r}: use seconds since "
                                        f"1970 or ISO 8601")
    if not 0 <= _FOLD.value < max(_MODULUS.value, 1):
        raise flags.ValidationError(
            f"--split_fold={_FOLD.value}: must be in [0, --split_modulus={_MODULUS.value}); "
            f"fold F holds out the queries whose md5 % {_MODULUS.value} == F")
    if _FOLD.value and _SPLIT.value != split_lib.QUERY_HASH:
        raise flags.ValidationError(f"--split_fold={_FOLD.value} needs --split=query_hash "
                                    f"(folds are md5 residues), got --split={_SPLIT.value}")
    return prepare_lib.PrepareConfig(
        output=_OUTPUT.value,
        split=split_lib.SplitConfig(method=_SPLIT.value, modulus=_MODULUS.value,
                                    time_cutoff=cutoff, eval_fraction=_EVAL_FRACTION.value,
                                    fold=_FOLD.value),
        max_examples=_MAX_EXAMPLES.value, records_per_shard=_PER_SHARD.value, seed=_SEED.value,
        **prepare_flags.config_kwargs(_MAX_TRAIN_QUERIES.value))


def main(argv):
    if len(argv) > 1:
        sys.exit(f"dpsr prepare: unexpected arguments {argv[1:]}; every input is a --flag")
    try:
        config = config_from_flags()
        if _RUNNER.value == IN_PROCESS:
            if _BEAM_OPTIONS.value:
                raise flags.ValidationError(f"--beam_option {_BEAM_OPTIONS.value} needs a Beam "
                                            f"--runner (DirectRunner, DataflowRunner, ...)")
            prepare_lib.prepare(config)
        else:
            try:
                from dpsr_tf.data import beam as beam_lib  # optional: Apache Beam, for --runner
            except ImportError as e:
                raise flags.ValidationError(
                    f"--runner={_RUNNER.value} needs Apache Beam ({e}); pip install -r "
                    f"requirements.txt") from None
            settings = beam_lib.BeamSettings(
                partition_mb=_BEAM_PARTITION_MB.value, partitions=_BEAM_PARTITIONS.value,
                range_lines=_BEAM_RANGE_LINES.value, temp_dir=_BEAM_TEMP_DIR.value)
            beam_lib.prepare_beam(config, _RUNNER.value, _BEAM_OPTIONS.value,
                                  settings=settings)
        if _GRAPH.value:
            graph_lib.build_graph(config.output, graph_lib.GraphConfig(
                neighbors=_GRAPH_NEIGHBORS.value, two_hop=_GRAPH_TWO_HOP.value))
    except (schema.SchemaError, ValueError, OSError, flags.Error) as e:
        print(f"dpsr prepare: error: {e}", file=sys.stderr)
        sys.exit(1)

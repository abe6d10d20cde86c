"""The Beam pipeline of the prepare: a chain of stages whose PCollections hold only tasks.

A stage is
    metadata --Plan--> task descriptors --Reshuffle--> Run (one task at a time per worker)
             --> each task's metadata, merged with everything before (meta.MergeMeta)
and the merged metadata (one small dict) is the next stage's input and side input. A task
descriptor is a tuple of names and numbers ("resolve_ids", "items", "00012"); the rows it
works on are in partitioned files (files.py) written by the stage before. So the runner
shuffles a few hundred small elements per stage, whatever the input size, and a worker holds
one partition or range at a time.

Stage order: read inputs -> resolve item/user ids -> number table rows -> join items ->
[number users from interactions] -> verdict -> number queries -> per query (+ pseudo-query
records) -> per user (+ eval/pseudo text matches) -> order records.
"""
import time

import apache_beam as beam
import numpy as np

from dpsr_tf.data.beam import files as files_lib
from dpsr_tf.data.beam import interaction_tasks as inter_tasks
from dpsr_tf.data.beam import meta as meta_lib
from dpsr_tf.data.beam import numbering
from dpsr_tf.data.beam import report as report_lib
from dpsr_tf.data.beam import table_tasks
from dpsr_tf.data.beam.job import Job
from dpsr_tf.tokenization import Tokenizer

_TOKENIZE_BATCH = 8192
META_PIECE = ("meta", "final")


class _Context:
    """Per-worker state of the tasks: the tokenizer (built once), caches, the report combiner."""

    def __init__(self, job: Job):
        self._job = job
        self._tokenizer = None
        self._vocab = (None, None)
        self.reports = report_lib.ReportFn(job.max_examples)

    def tokenize(self, texts):
        """(token ids [T] int32, lengths [len(texts)] int64) by the C++ tokenizer."""
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self._job.tokenizer)
        ids, lengths = [np.zeros([0], np.int32)], [np.zeros([0], np.int64)]
        for i in range(0, len(texts), _TOKENIZE_BATCH):
            batch_ids, splits = self._tokenizer.tokenize(list(texts[i:i + _TOKENIZE_BATCH]))
            ids.append(np.asarray(batch_ids, np.int32))
            lengths.append(np.diff(np.asarray(splits, np.int64)))
        return np.concatenate(ids), np.concatenate(lengths)

    def vocab_lookup(self, meta: dict, kind: str, num_columns: int):
        """Per column {value: categorical id} (1-based; 0 = empty or unseen)."""
        key = (id(meta), kind)
        if self._vocab[0] != key:
            vocabs = table_tasks.vocabularies(meta, kind, num_columns)
            self._vocab = (key, [{v: i + 1 for i, v in enumerate(vs)} for vs in vocabs])
        return self._vocab[1]


def _run_task(job: Job, ctx: _Context, meta: dict, task) -> dict:
    name, args = task[0], task[1:]
    if name == "read_table":
        return table_tasks.read_table_file(job, ctx, *args)
    if name == "read_inter":
        return inter_tasks.read_interactions_file(job, ctx, *args)
    if name == "resolve_ids":
        return table_tasks.resolve_ids(job, ctx, *args)
    if name == "rank_table":
        return table_tasks.rank_table(job, ctx, meta, *args)
    if name == "join_items":
        return inter_tasks.join_items(job, *args)
    if name == "first_positions":
        return numbering.first_positions(job, *args)
    if name == "rank_keys":
        return numbering.rank_keys(job, ctx, meta, *args)
    if name == "verdict":
        return inter_tasks.verdict(job, ctx, *args)
    if name == "per_query":
        return inter_tasks.per_query(job, *args)
    if name == "pseudo_records":
        return inter_tasks.pseudo_records(job, meta, *args)
    if name == "per_user":
        return inter_tasks.per_user(job, *args)
    if name == "eval_equal_pseudo":
        return inter_tasks.eval_equal_pseudo(job, *args)
    if name == "rank_records":
        return numbering.rank_records(job, *args)
    raise ValueError(f"unknown task {task!r}")


class _RunTasks(beam.DoFn):
    """task descriptor -> its metadata; the merged metadata so far as a side input."""

    def __init__(self, job: Job):
        super().__init__()
        self._job = job
        self._ctx = None

    def setup(self):
        self._ctx = _Context(self._job)

    def process(self, task, meta):
        start = time.monotonic()
        out = _run_task(self._job, self._ctx, meta, task)
        meta_lib.add_count(out, "c/task_seconds", task[0], time.monotonic() - start)
        meta_lib.add_count(out, "c/tasks", task[0])
        yield out


# ---------------------------------------------------------------------------------------------
# Plans: the tasks of a stage from the metadata of the stages before.

def _plan_read(_, job: Job):
    tasks = [("read_table", "items", i) for i in range(len(job.files["items"]))]
    tasks += [("read_table", "users", i) for i in range(len(job.files.get("users", ())))]
    return tasks + [("read_inter", i) for i in range(len(job.files["inter"]))]


def _plan_resolve(meta, job: Job):
    kinds = ("items", "users") if job.user_cols is not None else ("items",)
    return [("resolve_ids", kind, part) for kind in kinds
            for part in sorted(set(meta_lib.nonempty(meta, f"c/{kind}_cand"))
                               | set(meta_lib.nonempty(meta, f"c/{kind}_why")))]


def _plan_rank_tables(meta, job: Job):
    kinds = ("items", "users") if job.user_cols is not None else ("items",)
    return [("rank_table", kind, rng) for kind in kinds
            for rng in meta_lib.nonempty(meta, f"c/{kind}_kept")]


def _plan_join_items(meta, _):
    return [("join_items", part) for part in meta_lib.nonempty(meta, "c/inter")]


def _plan_first(source, name):
    def plan(meta, _):
        return [("first_positions", source, name, p) for p in meta_lib.nonempty(meta,
                                                                                f"c/{source}")]
    return plan


def _plan_rank_keys(name, tokenize):
    def plan(meta, _):
        return [("rank_keys", name, rng, tokenize)
                for rng in meta_lib.nonempty(meta, f"c/{name}_first")]
    return plan


def _plan_verdict(meta, _):
    return [("verdict", part) for part in meta_lib.nonempty(meta, "c/joined")]


def _plan_per_query(meta, _):
    return ([("per_query", part) for part in meta_lib.nonempty(meta, "c/kept")]
            + [("pseudo_records", rng) for rng in meta_lib.nonempty(meta, "c/pseudo")])


def _plan_per_user(meta, _):
    both = (set(meta_lib.nonempty(meta, "c/eval_lower"))
            & set(meta_lib.nonempty(meta, "c/pseudo_lower")))
    return ([("per_user", part) for part in meta_lib.nonempty(meta, "c/by_user")]
            + [("eval_equal_pseudo", part) for part in sorted(both)])


def _plan_rank_records(meta, _):
    return [("rank_records", split, rng) for split in ("train", "eval", "pseudo")
            for rng in meta_lib.nonempty(meta, f"c/records_{split}")]


def _stage(meta, label: str, plan, job: Job):
    tasks = meta | f"{label}Plan" >> beam.FlatMap(plan, job)
    metas = (tasks
             | f"{label}Spread" >> beam.Reshuffle()
             | f"{label}Run" >> beam.ParDo(_RunTasks(job), beam.pvalue.AsSingleton(meta)))
    return ((meta, metas)
            | f"{label}Join" >> beam.Flatten()
            | f"{label}Merge" >> beam.CombineGlobally(meta_lib.MergeMeta(job.max_examples)))


def _save_meta(meta, job: Job):
    files_lib.write_piece(job.base, *META_PIECE, meta)


def build(p, job: Job) -> None:
    """Adds the prepare's stages to pipeline p; the last writes the merged metadata as the
    piece META_PIECE (the launcher's input, with the other pieces)."""
    meta = p | "Start" >> beam.Create([{}])
    plans = [("Read", _plan_read), ("Resolve", _plan_resolve),
             ("RankTables", _plan_rank_tables), ("JoinItems", _plan_join_items)]
    if job.auto_users:
        plans += [("UsersFirst", _plan_first("auto_cand", "users")),
                  ("UsersRank", _plan_rank_keys("users", False))]
    plans += [("Verdict", _plan_verdict), ("QueriesFirst", _plan_first("kept", "queries")),
              ("QueriesRank", _plan_rank_keys("queries", True)), ("PerQuery", _plan_per_query),
              ("PerUser", _plan_per_user), ("RankRecords", _plan_rank_records)]
    for label, plan in plans:
        meta = _stage(meta, label, plan, job)
    _ = meta | "SaveMeta" >> beam.Map(_save_meta, job)

"""`dpsr prepare` as an Apache Beam pipeline: the single-process layout, from many workers.

The pipeline makes the same decisions as dpsr_tf/data/prepare.py with the same functions
(dpsr_tf/data/rows.py per row and per id, pseudo_queries.item_pseudo_queries per item,
prepare.user_histories per user, prepare.human_negative_table per query, split.is_eval_query
per query, the C++ tokenizer per text), and numbers rows the same way (first appearance in
file order, ranks.AssignRows), so the tables and every example are those of the single
process. Only the order of train and pseudo records on disk differs: the single process
shuffles them with numpy's permutation of `seed`, here they are ordered by a seeded hash of
their position (a shuffle that needs no global view). Eval records keep file order.

Stages (each a keyed step, so no worker holds more than one key's rows or one block):
  read      each input file is read by one worker (readers.TableReader: gz, quoting, line
            errors exactly as in one process); a glob of shards spreads the reading
  items     per-row checks -> group by item_id (duplicates, empty titles) -> rows by file
            order -> tokens (C++ tokenizer in a DoFn), categorical ids, pseudo-queries
  users     the same from the users file, or the first appearances of user_id values
  joins     interactions x items by item_id, x users by user_id -> the per-row verdict
  queries   rows by first appearance; split per query; tokens
  users     per user: the positives in time order and each interaction's history_end
  queries   per train query: its human negatives
  write     blocks of 65,536 table rows or records under the output (parts/); the launcher
            streams them into the layout's files (record files of --records_per_shard)

Not supported here (they need a global view the single process has for free): --build_vocab
(use the vocabulary of a first single-process run, or --vocab_file), --max_train_queries, and
--split=time without --split_time.
"""
import dataclasses
import os
import shutil
import time
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import layout_writer
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import pseudo_queries as pseudo_lib
from dpsr_tf.data import rows as rows_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.beam import blocks
from dpsr_tf.data.beam import layout_assembly
from dpsr_tf.data.beam import ranks
from dpsr_tf.data.beam import report as report_lib
from dpsr_tf.data.beam import row_steps as steps
from dpsr_tf.data.readers import ShardedReader
from dpsr_tf.data.schema import LabelKind

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")


# ---------------------------------------------------------------------------------------------
# Writing.

def _records_to_blocks(records, split: str, parts: str):
    """(sort key, record bytes) -> blocks of records in row order (row = rank of the key); the
    launcher cuts them into --records_per_shard files (layout_assembly.py)."""
    ranked = records | f"{split}RecordRank" >> ranks.AssignRows(
        steps.HASH_SHIFT if split != "eval" else steps.POSITION_SHIFT)
    return _to_blocks(ranked, f"records_{split}", parts)


def _to_blocks(pcoll, table: str, parts_dir: str):
    return (pcoll
            | f"{table}Key" >> beam.Map(blocks.block_key(table))
            | f"{table}Block" >> beam.GroupByKey()
            | f"{table}WriteBlock" >> beam.Map(blocks.write_block(parts_dir)))


def _single(pcoll, table: str, parts_dir: str):
    """A one-value PCollection as the table's row 0."""
    return _to_blocks(pcoll | f"{table}Row0" >> beam.Map(lambda v: (0, v)), table, parts_dir)



# ---------------------------------------------------------------------------------------------
# The pipeline.

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
    if config.pseudo_queries.per_item >= 1 << steps.PSEUDO_J_BITS:
        raise prepare_lib.PrepareError(f"--pseudo_queries_per_item must be below "
                                       f"{1 << steps.PSEUDO_J_BITS} with a Beam runner")


def _pseudo_of_item(row_cand, num_items: int, config: pseudo_lib.PseudoQueryConfig):
    row, cand = row_cand
    per_item = min(config.per_item, max(1, config.max_total // max(1, num_items)))
    cfg = dataclasses.replace(config, per_item=per_item)
    for j, text in enumerate(pseudo_lib.item_pseudo_queries(cand.title, cand.values, row, cfg)):
        yield (row << steps.PSEUDO_J_BITS) | j, (text, row)


def prepare_beam(config: prepare_lib.PrepareConfig, runner: str,
                 beam_args: Sequence[str] = (),
                 log: Callable[[str], None] = print) -> layout_lib.LayoutSpec:
    """Writes the layout of `prepare.prepare(config)` with an Apache Beam pipeline.

    Args:
      config: the prepare settings (see _check_supported for the few it refuses).
      runner: one of RUNNERS.
      beam_args: Beam pipeline options ("--direct_num_workers=2", "--project=...", ...).
      log: where the report and progress lines go.

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
    item_reader = ShardedReader(config.items, schema.ITEMS)
    item_cols = rows_lib.table_columns(item_reader, True)
    item_reader.close()
    user_reader = user_cols = None
    if config.users:
        user_reader = ShardedReader(config.users, schema.USERS)
        user_cols = rows_lib.table_columns(user_reader, False)
        user_reader.close()
    inter_reader = ShardedReader(config.interactions, schema.INTERACTIONS)
    inter_cols = rows_lib.interaction_columns(inter_reader)
    inter_reader.close()
    has_time = inter_cols.timestamp >= 0
    if config.split.method == split_lib.TIME and not has_time:
        raise schema.SchemaError(
            f"{config.interactions}:1: --split=time needs a timestamp column in the "
            f"interactions file; use --split=query_hash")
    auto_users = user_reader is None and inter_cols.user >= 0
    inter_notes = rows_lib.interaction_notes(inter_reader, auto_users)

    with layout_lib.building(output) as tmp:
        parts = os.path.join(tmp, blocks.PARTS_DIR)
        tok_config = config.tokenizer
        if tok_config.vocab_file:
            shutil.copyfile(tok_config.vocab_file, os.path.join(tmp, layout_lib.VOCAB_TXT))
            tok_config = dataclasses.replace(
                tok_config, vocab_file=os.path.join(tmp, layout_lib.VOCAB_TXT))
        rule = steps.SplitRule(config.split.method, config.split.modulus, config.split.fold,
                               config.split.time_cutoff)
        options = PipelineOptions(list(beam_args) + [f"--runner={runner}"])
        log(f"beam: running the prepare pipeline on {runner} "
            f"({' '.join(beam_args) or 'default options'})")
        pipeline_start = time.monotonic()
        p = beam.Pipeline(options=options)
        _build(p, config, tok_config, rule, item_reader.files, item_cols,
               user_reader.files if user_reader else None, user_cols,
               inter_reader.files, inter_cols, auto_users, has_time, parts)
        result = p.run()
        result.wait_until_finish()
        log(f"beam: pipeline done in {time.monotonic() - pipeline_start:.1f} s "
            f"({_rows_read(result)}); joining the table blocks")
        layout_assembly.assemble_layout(config, tmp, parts, tok_config, rule, item_cols,
                                        user_cols, inter_notes, auto_users, log)
        shutil.rmtree(parts)
    log(f"wrote {output} in {time.monotonic() - start:.1f} s")
    return layout_lib.load_layout_spec(output)


def _rows_read(result) -> str:
    """'rows read: items N, ...' from the readers' counters (where the runner reports them)."""
    try:
        counters = result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace("dpsr_prepare"))["counters"]
    except Exception:  # pylint: disable=broad-except  # a runner without metrics
        return "no metrics from this runner"
    read = {c.key.metric.name: c.committed for c in counters}
    return "rows read: " + ", ".join(
        f"{kind} {read.get(f'{kind}_rows_read', 0):,}" for kind in ("items", "users",
                                                                    "interactions"))


def _build(p, config, tok_config, rule, item_files, item_cols, user_files, user_cols,
           inter_files, inter_cols, auto_users, has_time, parts):
    every = config.progress_every_s
    counts = []

    # Items.
    item_events, items, item_whys = steps.table_rows(p, "Items", item_cols, item_files, every,
                                           schema.ITEMS)
    num_items = items | "NumItems" >> beam.combiners.Count.Globally()
    _to_blocks(items | "ItemIds" >> beam.Map(lambda rc: (rc[0], rc[1].row_id)), "item_ids",
               parts)
    _to_blocks(items | "ItemTitles" >> beam.Map(lambda rc: (rc[0], rc[1].title)),
               "item_titles", parts)
    item_tokens = (items | "ItemText" >> beam.Map(lambda rc: (rc[0], rc[1].title))
                   | "ItemTokenize" >> beam.ParDo(steps.Tokenize(tok_config)))
    _to_blocks(item_tokens, "item_tokens", parts)
    counts.append(item_tokens | "ItemTokenCount" >> beam.Map(lambda rt: ("item_tokens",
                                                                         len(rt[1]))))
    item_vocabs = steps.vocabularies(
        items | "ItemValues" >> beam.FlatMap(
            lambda rc: [(j, v) for j, v in enumerate(rc[1].values) if v]), "ItemVocab")
    _single(item_vocabs | "ItemVocabList" >> beam.combiners.ToList(), "item_vocabs", parts)
    _to_blocks(items | "ItemFeatures" >> beam.ParDo(
        steps.FeatureIds(), beam.pvalue.AsDict(item_vocabs)), "item_features", parts)
    item_rows_by_id = items | "ItemRowById" >> beam.Map(lambda rc: (rc[1].row_id, rc[0]))

    # Pseudo-queries: rows after the logged queries, in (item row, j) order.
    pseudo = (items
              | "PseudoQueries" >> beam.FlatMap(_pseudo_of_item,
                                                beam.pvalue.AsSingleton(num_items),
                                                config.pseudo_queries)
              | "PseudoRows" >> ranks.AssignRows(steps.PSEUDO_SHIFT))

    # Users.
    if user_files is not None:
        user_events, users, user_whys = steps.table_rows(p, "Users", user_cols, user_files, every,
                                               schema.USERS)
        _to_blocks(users | "UserIds" >> beam.Map(lambda rc: (rc[0], rc[1].row_id)),
                   "user_ids", parts)
        user_vocabs = steps.vocabularies(
            users | "UserValues" >> beam.FlatMap(
                lambda rc: [(j, v) for j, v in enumerate(rc[1].values) if v]), "UserVocab")
        _single(user_vocabs | "UserVocabList" >> beam.combiners.ToList(), "user_vocabs",
                parts)
        _to_blocks(users | "UserFeatures" >> beam.ParDo(
            steps.FeatureIds(), beam.pvalue.AsDict(user_vocabs)), "user_features", parts)
        user_rows_by_id = users | "UserRowById" >> beam.Map(lambda rc: (rc[1].row_id, rc[0]))
        _single(users | "NumUsers" >> beam.combiners.Count.Globally(), "num_users", parts)
        _single(user_events | "UserReport" >> beam.CombineGlobally(
            report_lib.ReportFn(config.max_examples)), "report_users", parts)

    # Interactions: parse, join items.
    inter_read = steps.read_files(p, "Inter", inter_files, schema.INTERACTIONS, every)
    parsed = inter_read | "InterParse" >> beam.FlatMap(
        steps.parse_interactions, inter_cols).with_outputs("events", "parsed")
    with_items = ({"parsed": parsed.parsed, "row": item_rows_by_id, "why": item_whys}
                  | "JoinItems" >> beam.CoGroupByKey()
                  | "WithItem" >> beam.FlatMap(steps.join_items))

    # Users: from the users file, or defined by their first reaching row.
    if auto_users:
        auto = (with_items
                | "AutoUserRows" >> beam.FlatMap(steps.auto_user_candidate)
                | "AutoUserFirst" >> beam.CombinePerKey(min)
                | "AutoUserKey" >> beam.Map(lambda up: (up[1], up[0]))
                | "AutoUserRank" >> ranks.AssignRows(steps.POSITION_SHIFT))
        _to_blocks(auto, "user_ids", parts)
        _single(auto | "NumUsers" >> beam.combiners.Count.Globally(), "num_users", parts)
        user_rows_by_id = auto | "AutoUserById" >> beam.Map(lambda ru: (ru[1], ru[0]))
        user_whys = p | "NoUserWhys" >> beam.Create([])
    if user_files is not None or auto_users:
        # Anonymous rows go around the join (they would all meet under the key "").
        keyed = (with_items
                 | "NamedUser" >> beam.Filter(lambda e: bool(e[1].user_id))
                 | "ByUser" >> beam.Map(steps.user_key))
        anonymous = (with_items
                     | "Anonymous" >> beam.Filter(lambda e: not e[1].user_id)
                     | "AnonymousRow" >> beam.Map(lambda e: e + (-1, None)))
        joined = (({"parsed": keyed, "row": user_rows_by_id, "why": user_whys}
                   | "JoinUsers" >> beam.CoGroupByKey()
                   | "WithUser" >> beam.FlatMap(steps.join_users), anonymous)
                  | "AllUsers" >> beam.Flatten())
    else:
        joined = with_items | "NoUsers" >> beam.Map(lambda e: e + (-1, None))
    verdict = joined | "Verdict" >> beam.FlatMap(steps.verdict).with_outputs("events", "kept")
    inter_events = (parsed.events, verdict.events) | "InterEvents" >> beam.Flatten()

    # Queries: rows by first appearance among kept rows; split per query.
    query_rows = (verdict.kept
                  | "QueryFirst" >> beam.Map(lambda qk: (qk[0], qk[1][0]))
                  | "QueryMin" >> beam.CombinePerKey(min)
                  | "QueryKey" >> beam.Map(lambda qp: (qp[1], qp[0]))
                  | "QueryRank" >> ranks.AssignRows(steps.POSITION_SHIFT))
    num_logged = query_rows | "NumLogged" >> beam.combiners.Count.Globally()
    per_query = ({"kept": verdict.kept,
                  "row": query_rows | "QueryById" >> beam.Map(lambda rq: (rq[1], rq[0]))}
                 | "JoinQueries" >> beam.CoGroupByKey()
                 | "PerQuery" >> beam.FlatMap(steps.join_queries, rule).with_outputs(
                     "interactions", "counts", "eval_lower"))
    counts.append(per_query.counts)
    query_texts = ((query_rows,
                    pseudo | "PseudoQueryRow" >> beam.Map(
                        lambda prt, n: (n + prt[0], prt[1][0]),
                        n=beam.pvalue.AsSingleton(num_logged)))
                   | "AllQueries" >> beam.Flatten())
    _to_blocks(query_texts, "query_texts", parts)
    _to_blocks(query_texts | "QueryTokenize" >> beam.ParDo(steps.Tokenize(tok_config)),
               "query_tokens", parts)
    _single(num_logged, "num_logged_queries", parts)
    _single(pseudo | "NumPseudo" >> beam.combiners.Count.Globally(), "num_pseudo", parts)
    # Eval queries that a pseudo-query spells (lower-cased), as the single process counts.
    pseudo_lower = (pseudo
                    | "PseudoLower" >> beam.Map(lambda prt: (prt[1][0].lower(), "pseudo"))
                    | "PseudoLowerOnce" >> beam.Distinct())
    counts.append(((per_query.eval_lower, pseudo_lower)
                   | "Lowers" >> beam.Flatten()
                   | "LowerGroup" >> beam.GroupByKey()
                   | "EvalEqualPseudo" >> beam.FlatMap(
                       lambda kv: ([("eval_equal_pseudo", sum(1 for v in kv[1] if v == "eval"))]
                                   if "pseudo" in kv[1] else []))))

    interactions = per_query.interactions
    counts.append(interactions | "LabelCounts" >> beam.Map(lambda it: (f"label_{it[5]}", 1)))
    counts.append(interactions | "SplitCounts" >> beam.Map(lambda it: (f"split_{it[7]}", 1)))
    counts.append(interactions | "WithUserCounts" >> beam.FlatMap(
        lambda it: [("with_user", 1)] if it[4] >= 0 else []))

    # Per user: history and history_end; interactions without a user have none.
    with_user = (interactions
                 | "HasUser" >> beam.Filter(lambda it: it[4] >= 0)
                 | "ByUserRow" >> beam.Map(lambda it: (it[4], it))
                 | "GroupUser" >> beam.GroupByKey()
                 | "PerUser" >> beam.FlatMap(steps.per_user, has_time).with_outputs(
                     "history", main="records"))
    _to_blocks(with_user.history, "user_history", parts)
    counts.append(with_user.history | "UsersWithHistory" >> beam.Map(
        lambda _: ("users_with_history", 1)))
    no_user = (interactions
               | "NoUser" >> beam.Filter(lambda it: it[4] < 0)
               | "NoUserRecord" >> beam.Map(steps.no_user_record))
    records = (with_user.records, no_user) | "Records" >> beam.Flatten()

    # Human negatives of train queries: a per-query table.
    negatives = (records
                 | "TrainNegatives" >> beam.Filter(lambda r: r[0] == "negative")
                 | "NegByQuery" >> beam.Map(lambda r: (r[2], r[3]))
                 | "NegGroup" >> beam.GroupByKey()
                 | "NegTable" >> beam.Map(steps.negatives))
    _to_blocks(negatives, "human_negatives", parts)
    counts.append(negatives | "NegQueries" >> beam.Map(lambda _: ("negative_queries", 1)))

    seed = config.seed
    for split in ("train", "eval"):
        key = ((lambda r: (r[1], r[4])) if split == "eval"
               else (lambda r, s=seed: (steps.seeded_hash(s, r[1]), r[4])))
        part = (records
                | f"{split}Filter" >> beam.Filter(lambda r, s=split: r[0] == s)
                | f"{split}Key" >> beam.Map(key))
        _records_to_blocks(part, split, parts)
    pseudo_records = pseudo | "PseudoRecord" >> beam.Map(
        lambda prt, n, s=seed + 1: (steps.seeded_hash(s, prt[0]),
                                    steps.record_bytes(n + prt[0], prt[1][1], -1, 0,
                                                       LabelKind.CLICK, 1.0)),
        n=beam.pvalue.AsSingleton(num_logged))
    _records_to_blocks(pseudo_records, "pseudo", parts)

    # Reports and counts.
    _single(item_events | "ItemReport" >> beam.CombineGlobally(
        report_lib.ReportFn(config.max_examples)), "report_items", parts)
    _single(inter_events | "InterReport" >> beam.CombineGlobally(
        report_lib.ReportFn(config.max_examples)), "report_interactions", parts)
    _single(tuple(counts) | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombinePerKey(sum)
            | "CountsDict" >> beam.combiners.ToDict(), "counts", parts)
    _single(num_items, "num_items", parts)

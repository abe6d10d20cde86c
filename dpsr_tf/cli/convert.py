"""dpsr convert: turn a public dataset into the three-file input format.

  dpsr convert --dataset=home_depot [--input=../shared/datasets/home_depot] --output=DIR \
      [--layout=LAYOUT_DIR]

With --layout, `dpsr prepare` runs next with the dataset's recommended flags.
"""
import os
import sys

from absl import flags

from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import schema
from dpsr_tf.data import split as split_lib
from dpsr_tf.data.converters import common

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DATASETS = os.environ.get("DPSR_DATASETS",
                           os.path.join(os.path.dirname(_ROOT), "shared", "datasets"))

_DATASET = flags.DEFINE_enum("dataset", None, sorted(common.CONVERTERS), "Which dataset.")
_INPUT = flags.DEFINE_string("input", None,
                             f"Dataset folder; default {_DATASETS}/<its folder>.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write items/users/interactions.tsv.")
_LAYOUT = flags.DEFINE_string("layout", None, "If set, also run dpsr prepare into this dir.")

flags.mark_flags_as_required(["dataset", "output"])


def main(argv):
    if len(argv) > 1:
        sys.exit(f"dpsr convert: unexpected arguments {argv[1:]}")
    name = _DATASET.value
    input_dir = _INPUT.value or os.path.join(_DATASETS, common.CONVERTERS[name][1])
    try:
        result = common.get_converter(name).convert(input_dir, _OUTPUT.value)
    except (OSError, ValueError, KeyError) as e:
        print(f"dpsr convert: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(result.format())
    if not _LAYOUT.value:
        print(f"next: {result.prepare_command('<layout_dir>')}")
        return
    split = split_lib.SplitConfig(
        method=split_lib.TIME if "--split=time" in result.prepare_flags else split_lib.QUERY_HASH)
    min_gain = 0.0
    for flag in result.prepare_flags:
        if flag.startswith("--eval_min_gain="):
            min_gain = float(flag.split("=", 1)[1])
    try:
        prepare_lib.prepare(prepare_lib.PrepareConfig(
            items=result.items_path, users=result.users_path,
            interactions=result.interactions_path, output=_LAYOUT.value, split=split,
            eval_min_gain=min_gain))
    except (schema.SchemaError, ValueError, OSError) as e:
        print(f"dpsr convert: prepare failed: {e}", file=sys.stderr)
        sys.exit(1)

"""dpsr generate-synthetic: write the seeded synthetic catalog (three files + ground truth).

  dpsr generate-synthetic --output=DIR [--preset=demo] [--num_items=...] [--seed=0] \
      [--polysemous_brands=N [--minor_sense_weight=W] [--polysemous_brand_share=S]] \
      [--layout=LAYOUT_DIR]
"""
import dataclasses
import sys

from absl import flags

from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import schema
from dpsr_tf.demo import synthetic_catalog as synthetic

_PRESETS = {
    "demo": synthetic.SyntheticConfig.demo(),
    "tiny": synthetic.SyntheticConfig(num_items=500, num_users=100, num_interactions=5_000),
    "1m": synthetic.SyntheticConfig(num_items=1_000_000, num_users=500_000,
                                    num_interactions=10_000_000, write_interaction_truth=False),
}
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write.")
_PRESET = flags.DEFINE_enum("preset", "demo", sorted(_PRESETS),
                            "Sizes: tiny (500 items), demo (10k items, 150k clicks), "
                            "1m (1M items, 10M clicks).")
_ITEMS = flags.DEFINE_integer("num_items", None, "Override the preset's item count.")
_USERS = flags.DEFINE_integer("num_users", None, "Override the preset's user count.")
_CLICKS = flags.DEFINE_integer("num_interactions", None, "Override the preset's click count.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (same seed -> same bytes).")
_TRUTH = flags.DEFINE_bool("interaction_truth", None,
                           "Write ground_truth_interactions.tsv (default: the preset's).")
_POLYSEMY = flags.DEFINE_integer("polysemous_brands", None,
                               "Add N made-up brands that sell in two categories with different "
                               "audiences; their bare names are ambiguous queries held out by the "
                               "default split (the sense benchmark's world; default 0).")
_MINOR = flags.DEFINE_float("minor_sense_weight", None,
                            "With --polysemous_brands: click weight of each brand's second sense "
                            "against its first, on its bare name and on queries naming the "
                            "brand in its second category (default: 0.3 on the bare name only).")
_SHARE = flags.DEFINE_float("polysemous_brand_share", None,
                            "With --polysemous_brands: share of their categories' items the "
                            "brands hold, so that one sense can fill a top 100 (default 0.5).")
_LAYOUT = flags.DEFINE_string("layout", None, "If set, also run dpsr prepare into this dir.")

flags.mark_flags_as_required(["output"])


def main(argv):
    if len(argv) > 1:
        sys.exit(f"dpsr generate-synthetic: unexpected arguments {argv[1:]}")
    overrides = {"seed": _SEED.value}
    for flag, field in ((_ITEMS, "num_items"), (_USERS, "num_users"),
                        (_CLICKS, "num_interactions"), (_TRUTH, "write_interaction_truth"),
                        (_POLYSEMY, "polysemous_brands"), (_MINOR, "minor_sense_weight"),
                        (_SHARE, "polysemous_brand_share")):
        if flag.value is not None:
            overrides[field] = flag.value
    try:
        config = dataclasses.replace(_PRESETS[_PRESET.value], **overrides)
    except ValueError as e:
        sys.exit(f"dpsr generate-synthetic: error: {e}")
    result = synthetic.generate(config, _OUTPUT.value)
    if _LAYOUT.value:
        try:
            prepare_lib.prepare(prepare_lib.PrepareConfig(
                items=result.items_path, users=result.users_path,
                interactions=result.interactions_path, output=_LAYOUT.value))
        except (schema.SchemaError, ValueError, OSError) as e:
            print(f"dpsr generate-synthetic: prepare failed: {e}", file=sys.stderr)
            sys.exit(1)

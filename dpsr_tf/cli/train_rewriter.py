"""dpsr train-rewriter: the cycle-consistent query rewriter (docs/rewriting.md) on a layout's
(query, clicked title) pairs; checkpoints, config and unit vocabulary go to --model_dir."""
import dataclasses

from absl import flags

from dpsr_tf.rewriting.config import RewriterConfig
from dpsr_tf.rewriting.train import train_rewriter
from dpsr_tf.model.progress import quiet_tf_logging

_D = RewriterConfig()
_LAYOUT = flags.DEFINE_string("layout_dir", None, "Training layout (dpsr prepare).")
_MODEL = flags.DEFINE_string("model_dir", None, "Output directory (resumes when it has "
                             "checkpoints).")
_MAX_UNITS = flags.DEFINE_integer("max_units", 4000, "Unit vocabulary size (words and CJK "
                                  "characters), the 4 reserved ids included.")
_LOG_EVERY = flags.DEFINE_integer("log_every_steps", 100, "Progress line every N steps.")
_SAVE_EVERY = flags.DEFINE_integer("save_checkpoints_steps", 500, "Checkpoint every N steps.")
_HOLDOUT = flags.DEFINE_integer("holdout_percent", 0, "Leave out the train queries whose salted "
                                "md5 mod 100 is below this (dpsr_tf/rewriting/data.in_holdout): "
                                "a tuning set the rewriter never sees.")
_FIELDS = {}
for _field in dataclasses.fields(RewriterConfig):
    if _field.name == "vocab_size":
        continue
    _default = getattr(_D, _field.name)
    _define = flags.DEFINE_float if isinstance(_default, float) else flags.DEFINE_integer
    _FIELDS[_field.name] = _define(_field.name, _default, f"RewriterConfig.{_field.name}.")
flags.mark_flags_as_required(["layout_dir", "model_dir"])


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"dpsr train-rewriter: unexpected arguments {argv[1:]}")
    quiet_tf_logging()
    try:
        cfg = RewriterConfig(**{k: v.value for k, v in _FIELDS.items()})
        cfg = dataclasses.replace(cfg, vocab_size=_MAX_UNITS.value)
        cfg.validate()
        train_rewriter(_LAYOUT.value, _MODEL.value, cfg, _MAX_UNITS.value, _LOG_EVERY.value,
                       _SAVE_EVERY.value, holdout_percent=_HOLDOUT.value)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dpsr train-rewriter: {e}") from None

"""dpsr prepare-sessions: an impressions file + a training layout -> a sessions directory
(train/eval SessionTables split by the layout's rule; dpsr_tf/ranking/sessions.py)."""
import json

from absl import flags

from dpsr_tf.ranking import sessions

_LAYOUT = flags.DEFINE_string("layout_dir", None, "Training layout (dpsr prepare).")
_IMPRESSIONS = flags.DEFINE_string("impressions", None,
                                   "Impressions file (docs/data_format.md, 'Impressions').")
_OUTPUT = flags.DEFINE_string("output", None, "Sessions directory to write.")
flags.mark_flags_as_required(["layout_dir", "impressions", "output"])


def main(argv):
    del argv
    try:
        info = sessions.prepare_sessions(_LAYOUT.value, _IMPRESSIONS.value, _OUTPUT.value)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dpsr prepare-sessions: {e}") from None
    print(json.dumps(info["splits"]))

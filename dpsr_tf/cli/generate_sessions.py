"""dpsr generate-sessions: simulated sessions (shown lists, position bias, user preference)
over a synthetic catalog -> an impressions file for `dpsr prepare-sessions`
(dpsr_tf/demo/synthetic_sessions.py)."""
import json

from absl import flags

from dpsr_tf.demo.synthetic_sessions import SessionSimConfig, simulate_impressions

_INPUT = flags.DEFINE_string("synthetic_dir", None, "Output of dpsr generate-synthetic.")
_OUTPUT = flags.DEFINE_string("output", None, "Impressions file to write (.tsv).")
_NUM = flags.DEFINE_integer("num_sessions", 20000, "Clicks sampled as sessions.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
flags.mark_flags_as_required(["synthetic_dir", "output"])


def main(argv):
    del argv
    try:
        counts = simulate_impressions(_INPUT.value, _OUTPUT.value,
                                      SessionSimConfig(num_sessions=_NUM.value, seed=_SEED.value))
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"dpsr generate-sessions: {e}") from None
    print(json.dumps(counts))

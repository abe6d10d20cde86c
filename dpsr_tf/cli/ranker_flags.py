"""Flags shared by `dpsr train-ranker` and `dpsr evaluate-ranker`."""
from absl import flags

SESSIONS = flags.DEFINE_string("sessions_dir", None, "Sessions (dpsr prepare-sessions).")
DPSR_MODEL = flags.DEFINE_string("dpsr_model_dir", None,
                                 "Trained DPSR model whose score and rank are features.")
DPSR_INDEX = flags.DEFINE_string("dpsr_index_dir", None,
                                 "Its index build (dpsr index): item embeddings, lexical "
                                 "settings.")
MODEL_DIR = flags.DEFINE_string("model_dir", None, "Ranker model directory.")
LAYOUT = flags.DEFINE_string("layout_dir", None,
                             "Training layout; default the one the sessions were prepared on.")

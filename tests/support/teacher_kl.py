"""The distillation tests' reference: how far a model's softened scores over every item are from
a teacher's, computed in NumPy from the teacher's cache (dpsr_tf/model/distill_cache.py)."""
import numpy as np

from dpsr_tf.model import distill_cache


def mean_kl_to_teacher(cache, rows: np.ndarray, student: np.ndarray, tau: float = 0.05) -> float:
    """Mean over the query rows of KL(softmax(T / tau) || softmax(S / tau)), T the teacher's
    scores of every item (max over its heads), S = student [len(rows), N] the model's."""
    arrays = distill_cache.load_arrays(cache)
    teacher_q = arrays["queries"][arrays["query_index"][rows]].astype(np.float32)
    teacher = np.einsum("qmd,nd->qnm", teacher_q,
                        arrays["items"].astype(np.float32)).max(axis=2)

    def log_softmax(x):
        z = x / tau - (x / tau).max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_p, log_s = log_softmax(teacher), log_softmax(student)
    return float((np.exp(log_p) * (log_p - log_s)).sum(axis=1).mean())

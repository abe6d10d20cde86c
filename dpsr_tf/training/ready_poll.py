"""How often a cluster task polls while it waits for the chief to initialize the model.

tf.compat.v1.train.SessionManager polls every 30 s by default while a worker waits for the
chief to initialize (or restore) the variables on the parameter servers; Estimator builds its
SessionManagers internally and offers no setting for it. `polling_every` changes the default
of that constructor keyword for the duration of a `with` block and restores it on exit, so no
other code in the process sees the change afterwards.
"""
import contextlib
import threading
from typing import Iterator

from tensorflow.python.training import session_manager

_lock = threading.Lock()


@contextlib.contextmanager
def polling_every(secs: float) -> Iterator[None]:
    """Within the block, a SessionManager built without recovery_wait_secs polls every `secs`.

    Blocks nest (the innermost wins) and each restores what it found. The change is to the
    class, so threads that build SessionManagers during the block see it too: use it around a
    whole training run, as train_and_evaluate does.
    """
    if secs <= 0:
        raise ValueError(f"ready poll interval must be > 0 seconds, got {secs}")
    with _lock:
        found = session_manager.SessionManager.__init__

        def init(self, *args, **kwargs):
            kwargs.setdefault("recovery_wait_secs", secs)
            found(self, *args, **kwargs)

        session_manager.SessionManager.__init__ = init
    try:
        yield
    finally:
        with _lock:
            session_manager.SessionManager.__init__ = found

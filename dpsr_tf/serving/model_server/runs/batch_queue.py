"""One batch key's queue, shared fairly by clients: who gets in when it is full, who runs next.

TF Serving's batch queue is one FIFO with a bound: a client that sends faster than the
batches run fills it, and every other client of the same model is refused UNAVAILABLE until
it drains. Here the queue of a key keeps one FIFO per client (a gRPC connection, as the run
queue identifies clients) under the same bound, in rows:

- Admission (longest-queue drop): a task that fits is queued. When the queue is full, a task
  whose client would hold no more than its fair share (the bound divided by the clients with
  tasks queued, itself included) is queued and pushes out the newest tasks of the client that
  holds the most rows; those fail RESOURCE_EXHAUSTED (that client takes more than its share).
  A task whose client would hold more than its share is refused: RESOURCE_EXHAUSTED while
  other clients have tasks queued, UNAVAILABLE when it is the only client (TF Serving's answer
  for a full queue). So a client alone may fill the queue as in TF Serving, and a flooding client
  can neither refuse nor delay by its backlog another client's requests.
- Batch formation (round robin): a batch takes one task from each client in turn (the turn
  order carries over from one batch to the next) until the next task does not fit. A client
  that a gate holds back (one that does not read its answers) is passed over; its tasks wait.
  A client's request waits for about one batch, not behind another client's backlog.
"""
import collections
from typing import Callable, Hashable, List, Optional

import grpc

from dpsr_tf.serving.errors import ServingError

_NONE = object()


class KeyQueue:
    """The tasks of one batch key, one FIFO per client.

    A task needs `.rows` (int) and `.enqueued` (time.monotonic() when queued). Not
    thread-safe: the batch scheduler calls it under its lock.

    Args:
      capacity_rows: the most rows queued, all clients together.
    """

    def __init__(self, capacity_rows: int):
        self.capacity_rows = capacity_rows
        self.rows = 0
        self._clients = collections.OrderedDict()  # client -> deque of tasks, in turn order
        self._client_rows = collections.Counter()

    def __bool__(self) -> bool:
        return bool(self._clients)

    def oldest_enqueued(self) -> Optional[float]:
        """When the longest-waiting task was queued (None: empty)."""
        return min((q[0].enqueued for q in self._clients.values()), default=None)

    def any_eligible(self, eligible: Callable) -> bool:
        """Whether some client's oldest task passes eligible(client, task)."""
        return any(eligible(c, q[0]) for c, q in self._clients.items())

    def admit(self, client: Hashable, task, on_pushed_out: Callable) -> None:
        """Queues `task` of `client`, or raises why not.

        Args:
          client: who sent it.
          task: the task (`.rows` rows).
          on_pushed_out: on_pushed_out(task, error) for each task pushed out to make room.

        Raises:
          ServingError(RESOURCE_EXHAUSTED): the queue is full and `client` would hold more
            than its fair share while other clients have tasks queued.
          ServingError(UNAVAILABLE): the queue is full and `client` is the only client.
        """
        held = self._client_rows[client]
        if self.rows + task.rows > self.capacity_rows:
            clients = len(self._clients) + (client not in self._clients)
            share = self.capacity_rows // clients
            if held + task.rows > share:
                if clients == 1:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full; "
                        "retry later or add servers")
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the batch queue is full and this client holds {held} of its "
                    f"{self.capacity_rows} rows, more than its share ({share}) of the "
                    f"{clients} clients queued; wait for answers before sending more")
            self._push_out(task.rows, on_pushed_out)
        queue = self._clients.get(client)
        if queue is None:
            queue = self._clients[client] = collections.deque()
        queue.append(task)
        self._client_rows[client] = held + task.rows
        self.rows += task.rows

    def _push_out(self, rows: int, on_pushed_out: Callable) -> None:
        """Drops the newest tasks of the clients holding the most rows until `rows` fit."""
        while self.rows + rows > self.capacity_rows:
            heaviest = max(self._clients, key=self._client_rows.__getitem__)
            queue = self._clients[heaviest]
            task = queue.pop()
            self._forget(heaviest, task.rows, queue)
            on_pushed_out(task, ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "pushed out of the full batch queue by another client's request: this client "
                "held the most of the queue; wait for answers before sending more"))

    def take_batch(self, max_rows: int, eligible: Optional[Callable] = None) -> List:
        """Removes and returns the next batch: one task per client in turn while they fit.

        Args:
          max_rows: the most rows in the batch.
          eligible: optional eligible(client, task) -> bool for a client's oldest task; the
            tasks of a client that is not eligible stay queued (held back) and keep their turn.
        """
        batch, rows, skipped = [], 0, set()
        while True:
            client = next((c for c in self._clients if c not in skipped), _NONE)
            if client is _NONE:  # (None is a client: the caller named none)
                break
            queue = self._clients[client]
            if eligible is not None and not eligible(client, queue[0]):
                skipped.add(client)
                continue
            if rows + queue[0].rows > max_rows:
                break
            task = queue.popleft()
            batch.append(task)
            rows += task.rows
            self._forget(client, task.rows, queue)
            if queue:
                self._clients.move_to_end(client)
        return batch

    def _forget(self, client, rows: int, queue) -> None:
        self.rows -= rows
        self._client_rows[client] -= rows
        if not queue:
            del self._clients[client]
            del self._client_rows[client]

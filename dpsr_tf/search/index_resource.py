"""The TF2/TF1 plumbing shared by the FAISS and lexical index resources (faiss_ops.py,
lexical_ops.py): a file held as a SavedModel asset, loaded once into a resource.

TF2 (eager, tf.function, tf.Module): the file is loaded when the object is built, and again
from the SavedModel's assets/ when a SavedModel holding it is loaded. TF1 graphs: building the
object adds its load op to the TABLE_INITIALIZERS collection (and a constant path to
ASSET_FILEPATHS), like a lookup table; run tf.compat.v1.tables_initializer().
"""
import tensorflow as tf


class IndexResource(tf.saved_model.experimental.TrackableResource):
    """A file-backed index resource; subclasses give the handle, load and release ops.

    Args:
      path: the index file as a str, a scalar tf.string tensor, or a tf.saved_model.Asset (a
        str or tensor is wrapped in an Asset so that a SavedModel carries the file).
      shared_name: resource name (subclasses default to a fresh unique name).
      name: name of the handle op.
    """

    def __init__(self, path, *, shared_name, name):
        super().__init__(device="CPU")
        asset = path if isinstance(path, tf.saved_model.Asset) else tf.saved_model.Asset(path)
        self._asset = self._track_trackable(asset, "_asset")
        self._name = name
        self._shared_name = shared_name
        with tf.init_scope():
            self._resource_handle = self._create_resource()
        graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        if graph is not None and graph._get_control_flow_context() is not None:  # pylint: disable=protected-access
            with tf.init_scope():
                self._init_op = self._initialize()
        else:
            self._init_op = self._initialize()

    # Subclass hooks: the kind's ops.
    def _handle_op(self, shared_name, name):
        raise NotImplementedError

    def _load_op(self, handle, path, name):
        raise NotImplementedError

    def _release_op(self, handle):
        raise NotImplementedError

    @property
    def asset(self) -> tf.saved_model.Asset:
        """The index file as a SavedModel asset."""
        return self._asset

    @property
    def initializer(self):
        """The load op (TF1 graphs; also in the TABLE_INITIALIZERS collection)."""
        return self._init_op

    def _create_resource(self):
        return self._handle_op(self._shared_name, self._name)

    def _initialize(self):
        path = tf.convert_to_tensor(self._asset.asset_path, tf.string)
        init_op = self._load_op(self.resource_handle, path, f"{self._name}_load")
        if not tf.executing_eagerly():
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS, init_op)
            graph = tf.compat.v1.get_default_graph()
            if not graph.building_function and path.op.type == "Const":
                tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS, path)
        return init_op

    def _destroy_resource(self):
        # Eagerly, or in the SavedModel's destroyer function: drop this holder. Nothing in a
        # TF1 graph (its session frees its resources when it closes).
        if tf.executing_eagerly() or tf.compat.v1.get_default_graph().building_function:
            self._release_op(self.resource_handle)


def handle_of(index):
    """The resource handle of an index object (or a restored one), or the handle itself."""
    handle = getattr(index, "resource_handle", index)
    if not tf.is_tensor(handle):
        raise TypeError(f"index must be an index resource (or a restored one, or its resource "
                        f"handle), got {type(index).__name__}")
    return handle


def check_int(name, value, low, high):
    """An int32 scalar tensor; a Python int out of [low, high] raises ValueError now."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return tf.convert_to_tensor(value, tf.int32, name=name)

"""TF Serving's test models, made by code (never copied): the same graphs as its testdata.

* `half_plus_two_tf1(path, b)`: TF1 graph of tensorflow/cc/saved_model/testdata/half_plus_two
  (y = a*x + b with a = 0.5, b = 2; y2 = a*x + 3... as below). Signatures:
    serving_default   predict   {x [?,1] float} -> {y}
    regress_x_to_y    regress   {inputs: serialized tf.Example} -> {outputs: y}
    regress_x_to_y2   regress   {inputs} -> {outputs: y2 = a*x + c}
    regress_x2_to_y3  regress   {inputs: x2 float} -> {outputs: y3 = a*x2 + c}
    classify_x_to_y   classify  {inputs} -> {scores: y}
    classify_x2_to_y3 classify  {inputs: x2 float} -> {scores: y3}
    odd_method        "not/a/method" {x} -> {y}   (for the method-name check)
  with c = 3; `b=3` gives half_plus_three (y = 0.5x + 3).
* `half_plus_two_tf2(path)`: the same function saved by tf.saved_model.save from a tf.Module;
  every signature's method is `tensorflow/serving/predict`, as TF2 writes them.
* `counter_model(path)`: TF Serving's saved_model_counter: a float variable and the
  signatures get_counter, incr_counter, reset_counter (no inputs) and incr_counter_by {delta}.
* `bad_model(path)`: a version whose variables are missing (its load fails).
"""
import os
import shutil

import tensorflow as tf


def _features(serialized):
    parsed = tf.io.parse_example(serialized, {
        "x": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
        "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])})
    return parsed["x"], parsed["x2"]


def _save_tf1(graph, signatures, path: str) -> None:
    """A TF1 SavedModel (tag "serve") of `graph` with its variables initialized."""
    v1 = tf.compat.v1
    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()


def half_plus_two_tf1(path: str, b: float = 2.0) -> str:
    """Writes the TF1 half_plus_two (b=2) or half_plus_three (b=3) SavedModel at `path`."""
    v1 = tf.compat.v1
    sig = v1.saved_model.signature_def_utils
    info = v1.saved_model.utils.build_tensor_info
    with tf.Graph().as_default() as graph:
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        x_parsed, x2_parsed = _features(serialized)
        x = tf.identity(x_parsed, name="x")
        x2 = tf.identity(x2_parsed, name="x2")
        a = v1.Variable(0.5, name="a")
        b_var = v1.Variable(b, name="b")
        c = v1.Variable(3.0, name="c")
        y = tf.add(tf.multiply(a, x), b_var, name="y")
        y2 = tf.add(tf.multiply(a, x), c, name="y2")
        y3 = tf.add(tf.multiply(a, x2), c, name="y3")

        def regress(out):
            return sig.build_signature_def({"inputs": info(serialized)}, {"outputs": info(out)},
                                           "tensorflow/serving/regress")

        def classify(out):
            return sig.build_signature_def({"inputs": info(serialized)}, {"scores": info(out)},
                                           "tensorflow/serving/classify")

        signatures = {
            "serving_default": sig.build_signature_def({"x": info(x)}, {"y": info(y)},
                                                       "tensorflow/serving/predict"),
            "regress_x_to_y": regress(y),
            "regress_x_to_y2": regress(y2),
            "regress_x2_to_y3": sig.build_signature_def(
                {"inputs": info(x2)}, {"outputs": info(y3)}, "tensorflow/serving/regress"),
            "classify_x_to_y": classify(y),
            "classify_x2_to_y3": sig.build_signature_def(
                {"inputs": info(x2)}, {"scores": info(y3)}, "tensorflow/serving/classify"),
            "odd_method": sig.build_signature_def({"x": info(x)}, {"y": info(y)},
                                                  "not/a/method"),
        }
        _save_tf1(graph, signatures, path)
    return path


class _HalfPlusTwo(tf.Module):
    def __init__(self):
        super().__init__()
        self.a = tf.Variable(0.5)
        self.b = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        return {"y": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        x, _ = _features(inputs)
        return {"outputs": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        x, _ = _features(inputs)
        return {"scores": self.a * x + self.b}


def half_plus_two_tf2(path: str) -> str:
    """Writes the TF2 half_plus_two (tf.saved_model.save) at `path`."""
    module = _HalfPlusTwo()
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.predict, "regress_x_to_y": module.regress,
        "classify_x_to_y": module.classify})
    return path


def bad_model(path: str) -> str:
    """A SavedModel whose variables are gone: loading it fails."""
    half_plus_two_tf1(path)
    shutil.rmtree(os.path.join(path, "variables"))
    return path


def counter_model(path: str) -> str:
    """Writes the stateful counter SavedModel (signatures with only outputs, or one input)."""
    v1 = tf.compat.v1
    sig = v1.saved_model.signature_def_utils
    info = v1.saved_model.utils.build_tensor_info
    with tf.Graph().as_default() as graph:
        counter = v1.Variable(0.0, name="counter", use_resource=False)
        delta = v1.placeholder(tf.float32, [], name="delta")
        get = tf.identity(counter, name="get")
        incr = v1.assign_add(counter, 1.0, name="incr")
        incr_by = v1.assign_add(counter, delta, name="incr_by")
        reset = v1.assign(counter, 0.0, name="reset")
        predict = "tensorflow/serving/predict"
        signatures = {
            "get_counter": sig.build_signature_def({}, {"output": info(get)}, predict),
            "incr_counter": sig.build_signature_def({}, {"output": info(incr)}, predict),
            "reset_counter": sig.build_signature_def({}, {"output": info(reset)}, predict),
            "incr_counter_by": sig.build_signature_def({"delta": info(delta)},
                                                       {"output": info(incr_by)}, predict),
        }
        _save_tf1(graph, signatures, path)
    return path


def tf_saved_model_save(path: str) -> str:
    """tensorflow_model_server_test's test_tf_saved_model_save: y = v1 * v2 * x with v1 = 3,
    v2 = 2, x of any shape (TensorSpec(None))."""
    root = tf.train.Checkpoint()
    root.v1 = tf.Variable(3.0)
    root.v2 = tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(root, path, root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))
    return path


def tf_saved_model_save_multiple_signatures(path: str) -> str:
    """test_tf_saved_model_save_multiple_signatures: serving_default -> y = 1,
    custom_signature_key -> y = 2."""
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(root, path, signatures={"serving_default": root.f,
                                                "custom_signature_key": root.g})
    return path


def keras_sequential(path: str, distributed: bool = False) -> str:
    """test_sequential_keras_saved_model_save (input x [?,1], y = x) and, with `distributed`,
    test_distrat_sequential_keras_saved_model_save (built under a MirroredStrategy over two
    virtual CPUs: Dense(1) with weights 1, bias 0, then y = x). `distributed` must run in a
    process whose TensorFlow runtime is not initialized yet (virtual CPUs)."""
    def build():
        model = tf.keras.models.Sequential()
        model.add(tf.keras.layers.Input(dtype="float32", shape=(1,), name="x"))
        if distributed:
            model.add(tf.keras.layers.Dense(1, kernel_initializer="ones",
                                            bias_initializer="zeros"))
        model.add(tf.keras.layers.Lambda(lambda x: x, name="y"))
        return model
    if distributed:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        with tf.distribute.MirroredStrategy(devices=("/cpu:0", "/cpu:1")).scope():
            model = build()
    else:
        model = build()
    tf.saved_model.save(model, path)
    return path


if __name__ == "__main__":  # python tfs_testdata.py distrat PATH (a fresh process)
    import sys
    keras_sequential(sys.argv[2], distributed=sys.argv[1] == "distrat")

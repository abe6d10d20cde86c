"""A tiny trained 2-head model, its index (2 FAISS shards + BM25) and its report, made once."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tiny_report(tmp_path_factory):
    """{"spec", "model_dir", "index_dir", "output", "page", "train_result"}: a 2-head model
    trained 60 steps on prepare_tiny_layout, a Flat index, and its report with a 2-point
    alpha sweep of 20 steps per model (checkpoints kept for the tests)."""
    from dpsr_tf.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
    from tests.support.tiny_model import prepare_tiny_layout  # pylint: disable=import-outside-toplevel
    from dpsr_tf.report import ReportConfig, build_report  # pylint: disable=import-outside-toplevel
    from dpsr_tf.training import driver  # pylint: disable=import-outside-toplevel
    from dpsr_tf.training.config import TrainConfig  # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing import catalog_index  # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing.index_builder import IndexBuildConfig  # pylint: disable=import-outside-toplevel

    work = tmp_path_factory.mktemp("report")
    spec = prepare_tiny_layout(str(work))
    model_config = ModelConfig(num_heads=2, embedding_dim=16, token_embedding_dim=16,
                               feature_embedding_dim=4, history_embedding_dim=4,
                               item_hidden_units=(32,), query_hidden_units=(32,),
                               adapter_hidden_units=(16,), query_projection_dim=16,
                               num_negatives=8, learning_rate=0.1, personalization="profile")
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=str(work / "model"),
                        batch_size=32, train_steps=60, save_checkpoints_steps=30,
                        save_summary_steps=10, eval_random_negatives=20, eval_steps=2, seed=0,
                        throttle_secs=0)
    os.environ.pop("TF_CONFIG", None)
    train_result = driver.train_and_evaluate(model_config, train)
    index_dir = str(work / "index")
    catalog_index.index_catalog(train.model_dir, index_dir,
                                IndexBuildConfig(factory="Flat", num_shards=2))
    output = str(work / "out")
    cfg = ReportConfig(model_dirs=(train.model_dir,), output=output, index_dir=index_dir,
                       num_random=50, map_items=120, map_queries=2, alpha_sweep=(0.0, 1.0),
                       sweep_steps=20, keep_sweep_checkpoints=True,
                       command="dpsr report --model_dir=M --output=O (test)")
    page = build_report(cfg, log=lambda _: None)
    return {"spec": spec, "model_dir": train.model_dir, "index_dir": index_dir,
            "output": output, "page": page, "train_result": train_result, "cfg": cfg}

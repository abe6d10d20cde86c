"""Converters from public datasets to the three-file input format (docs/data_format.md).

Each module has `convert(input_dir, output_dir) -> ConversionResult` and documents its mapping;
`CONVERTERS` maps a --dataset name to (module, default folder under ../shared/datasets).
"""
from dpsr_tf.data.converters.common import CONVERTERS, ConversionResult, get_converter

__all__ = ["CONVERTERS", "ConversionResult", "get_converter"]

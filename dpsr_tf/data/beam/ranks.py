"""Dense row numbers by a sort key, without gathering the keys in one place.

The single-process prepare numbers items, users and queries by first appearance (file order).
`AssignRows` gives the same numbers in Beam: keys are cut into buckets by their high bits, each
bucket's size is counted, and each bucket ranks its own keys after the sizes of the buckets
before it (a side input of one number per bucket). A worker holds one bucket at a time.
"""
from typing import Iterable, List, Tuple

import apache_beam as beam


def _bucket_of(shift: int):
    def bucket(element):
        sort_key, _ = element
        return (int(sort_key) >> shift, element)
    return bucket


def _rank_bucket(bucket_elements, sizes: List[Tuple[int, int]]) -> Iterable:
    bucket, elements = bucket_elements
    start = sum(n for b, n in sizes if b < bucket)
    ordered = sorted(elements, key=lambda e: e[0])
    for offset, (_, payload) in enumerate(ordered):
        yield start + offset, payload


class AssignRows(beam.PTransform):
    """(sort_key int, payload) with distinct sort keys -> (row, payload), row = rank of sort_key.

    Args:
      shift: keys k and k' share a bucket iff k >> shift == k' >> shift; a bucket should hold at
        most a few million elements (it is sorted in one worker).
    """

    def __init__(self, shift: int):
        super().__init__()
        self._shift = shift

    def expand(self, pairs):
        bucketed = pairs | "Bucket" >> beam.Map(_bucket_of(self._shift))
        sizes = bucketed | "Sizes" >> beam.combiners.Count.PerKey()
        return (bucketed
                | "Group" >> beam.GroupByKey()
                | "Rank" >> beam.FlatMap(_rank_bucket, sizes=beam.pvalue.AsList(sizes)))

"""The producer's partitioner picks exactly the partition of Kafka's default partitioner."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from eventfold.kafka import murmur2, partition_for_key


def test_murmur2_matches_the_java_clients_vectors() -> None:
    # From Kafka's UtilsTest.testMurmur2 (signed Java ints, here as unsigned 32-bit).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, java in cases.items():
        assert murmur2(data) == java & 0xFFFFFFFF


@given(st.binary(max_size=300))
def test_murmur2_matches_aiokafka(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.binary(min_size=1, max_size=120), st.integers(min_value=1, max_value=64))
def test_the_partition_is_the_default_partitioners(key: bytes, count: int) -> None:
    partitions = list(range(count))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert partition_for_key(key, partitions, partitions) == expected
    assert partition_for_key(key, partitions, partitions) == expected  # cached: the same


def test_no_key_picks_an_available_partition() -> None:
    random.seed(7)
    picks = {partition_for_key(None, [0, 1, 2, 3], [1, 3]) for _ in range(50)}
    assert picks == {1, 3}
    assert partition_for_key(None, [0, 1], []) in {0, 1}

"""Page occupancy for the heap map, computed from object addresses and sizes."""

import numpy as np
import pytest

from demos.plots import page_occupancy

PAGE = 4096
BASE = 0x7F0000000000


@pytest.mark.parametrize(
    "objects, expected",
    [
        ([(0, 100)], [100, 0, 0, 0]),
        ([(10, 100), (200, 50)], [150, 0, 0, 0]),
        ([(PAGE - 10, 30)], [10, 20, 0, 0]),
        ([(100, 3 * PAGE)], [PAGE - 100, PAGE, PAGE, 100]),
        ([(PAGE, PAGE)], [0, PAGE, 0, 0]),
        ([(0, 0)], [0, 0, 0, 0]),
    ],
    ids=["inside-one-page", "two-in-one-page", "straddles-a-boundary", "spans-full-pages", "exactly-one-page",
         "empty-object"],
)
def test_counts_live_bytes_per_page(objects, expected):
    starts = np.array([BASE + start for start, _ in objects])
    lengths = np.array([length for _, length in objects])
    assert page_occupancy(starts, lengths, BASE, 4, PAGE).tolist() == expected


def test_total_equals_the_bytes_of_objects_inside_the_range():
    rng = np.random.default_rng(5)
    starts = np.sort(rng.integers(0, 40 * PAGE, 300)) + BASE
    lengths = rng.integers(1, 3 * PAGE, 300)
    inside = starts + lengths <= BASE + 64 * PAGE
    occupancy = page_occupancy(starts, lengths, BASE, 64, PAGE)
    assert occupancy.sum() == lengths[inside].sum()

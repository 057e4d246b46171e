"""xmr.train.prefetched: a batch source read one ahead by a background thread."""
import threading

import pytest

from xmr.train import prefetched


def test_same_items_in_order_each_built_off_the_caller_thread():
    built_by = []

    def source():
        for i in range(5):
            built_by.append(threading.current_thread().name)
            yield i

    assert list(prefetched(source())) == [0, 1, 2, 3, 4]
    assert all(name.startswith("xmr-batches") for name in built_by)
    assert list(prefetched([])) == []


def test_an_error_while_building_reaches_the_caller_after_the_items_before_it():
    def source():
        yield 1
        raise ValueError("bad batch")

    got = prefetched(source())
    assert next(got) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(got)


def test_stopping_early_builds_at_most_one_more():
    built = []

    def source():
        for i in range(100):
            built.append(i)
            yield i

    got = prefetched(source())
    assert [next(got), next(got)] == [0, 1]
    got.close()
    assert built == [0, 1, 2]

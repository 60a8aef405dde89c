"""Read-ahead thread: order kept, errors surface at their item, early exit stops the reader."""

from __future__ import annotations

import threading
import time

import pytest

from wsi_pixelcam.data.prefetch import prefetch


def test_items_arrive_in_order_and_the_reader_runs_ahead():
    produced: list[int] = []

    def source():
        for i in range(10):
            produced.append(i)
            yield i

    stream = prefetch(source(), depth=3)
    assert next(stream) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 4 and time.monotonic() < deadline:  # 1 taken + 3 queued
        time.sleep(0.01)
    assert len(produced) >= 4
    assert [0, *stream] == list(range(10))


def test_a_reader_error_is_raised_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetch(source()):
            got.append(item)
    assert got == [1, 2]


def test_closing_early_stops_the_reader_thread():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    stream = prefetch(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert threading.active_count() == before


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], depth=0))

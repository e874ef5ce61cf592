"""`gateway serve`'s collector settings (issue 12, item 0): the objects of 1,000 requests in
flight do not start a young collection (each one found everything alive and cost ~7 µs a
request at 1,000 connections with the old threshold of 10,000)."""

from __future__ import annotations

import gc

from gateway.cli import tune_gc

IN_FLIGHT = 1000
OBJECTS_PER_REQUEST = 50  # tracked containers a request holds while in flight (frames, futures, header tuples)


def test_a_thousand_requests_in_flight_start_no_young_collection():
    before = gc.get_threshold()
    collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    tune_gc()
    gc.callbacks.append(count)
    try:
        in_flight = [[[i, j] for j in range(OBJECTS_PER_REQUEST)] for i in range(IN_FLIGHT)]
        assert len(in_flight) == IN_FLIGHT
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
        gc.set_threshold(*before)
    assert collections == [], f"collections of generations {collections}"

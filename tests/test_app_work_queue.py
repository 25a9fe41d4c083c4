"""The device queue (``app/work_queue.py``): one job at a time per device, first come first served,
places reported while waiting, and a cancel that leaves the line."""

from __future__ import annotations

import threading
import time

import pytest

from app.work_queue import DeviceQueue

WAIT_S = 10  # generous bound for a thread to reach a state on a loaded machine


def _until(condition) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_jobs_on_one_device_run_one_at_a_time_in_order_of_arrival():
    queue = DeviceQueue(poll_s=0.01)
    order, places, running, most_running = [], {}, [0], [0]
    lock = threading.Lock()

    def job(name: str) -> None:
        with queue.turn("cpu", lambda ahead: places.setdefault(name, []).append(ahead)) as turn:
            with lock:
                running[0] += 1
                most_running[0] = max(most_running[0], running[0])
            order.append((name, turn.ahead_on_arrival))
            time.sleep(0.02)
            with lock:
                running[0] -= 1

    with queue.turn("cpu"):  # the device is busy while the others arrive
        threads = []
        for name in "abc":
            threads.append(threading.Thread(target=job, args=(name,)))
            threads[-1].start()
            arrived = len(threads)
            _until(lambda arrived=arrived: queue.ahead("cpu") == arrived + 1)
        _until(lambda: all(name in places for name in "abc"))
    for thread in threads:
        thread.join(WAIT_S)
    assert order == [("a", 1), ("b", 2), ("c", 3)]
    assert most_running == [1]
    # Each waiting job was told how many were ahead of it, fewer as the line moved.
    assert places["a"][0] == 1 and places["c"][0] == 3
    assert all(sorted(seen, reverse=True) == seen for seen in places.values())
    assert queue.ahead("cpu") == 0


def test_devices_do_not_wait_for_each_other():
    queue = DeviceQueue(poll_s=0.01)
    with queue.turn("cuda:0"), queue.turn("cuda:1") as second, queue.turn("cpu") as third:
        assert second.ahead_on_arrival == third.ahead_on_arrival == 0
        assert queue.ahead("cuda:0") == queue.ahead("cuda:1") == queue.ahead("cpu") == 1


class Cancelled(Exception):
    pass


def test_an_exception_while_waiting_leaves_the_queue_and_lets_the_next_job_run():
    queue = DeviceQueue(poll_s=0.01)
    cancel, outcome = threading.Event(), []

    def cancellable() -> None:
        def waiting(ahead: int) -> None:
            if cancel.is_set():
                raise Cancelled

        try:
            with queue.turn("cpu", waiting):
                outcome.append("ran")
        except Cancelled:
            outcome.append("cancelled")

    with queue.turn("cpu"):
        waiter = threading.Thread(target=cancellable)
        waiter.start()
        _until(lambda: queue.ahead("cpu") == 2)
        cancel.set()
        waiter.join(WAIT_S)
        assert outcome == ["cancelled"] and queue.ahead("cpu") == 1
    with queue.turn("cpu") as turn:  # nobody left ahead
        assert turn.ahead_on_arrival == 0


def test_a_failing_job_frees_the_device():
    queue = DeviceQueue(poll_s=0.01)
    with pytest.raises(RuntimeError), queue.turn("cpu"):
        raise RuntimeError("out of memory")
    assert queue.ahead("cpu") == 0

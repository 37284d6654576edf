"""scalekit._waiting.Latch: set once, seen by threads and by tasks on several loops."""

from __future__ import annotations

import asyncio
import threading

from scalekit._waiting import Latch


def test_threads_and_tasks_on_two_loops_all_wake_once_set() -> None:
    latch = Latch()
    woken: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(5)

    def thread_waiter(name: str) -> None:
        started.wait()
        latch.wait()
        with lock:
            woken.append(name)

    def loop_waiter(name: str) -> None:
        async def main() -> None:
            task = asyncio.ensure_future(latch.wait_async())
            await asyncio.sleep(0)
            started.wait()
            await task
            with lock:
                woken.append(name)

        asyncio.run(main())

    workers = [threading.Thread(target=thread_waiter, args=(f"t{i}",)) for i in range(2)]
    workers += [threading.Thread(target=loop_waiter, args=(f"l{i}",)) for i in range(2)]
    for worker in workers:
        worker.start()
    started.wait()
    assert not latch.is_set()
    assert woken == []
    latch.set()
    latch.set()  # a second set is a no-op
    for worker in workers:
        worker.join(10)
    assert sorted(woken) == ["l0", "l1", "t0", "t1"]


def test_a_waiter_after_the_set_returns_at_once() -> None:
    latch = Latch()
    latch.set()
    latch.wait()
    asyncio.run(latch.wait_async())
    assert latch.is_set()


def test_a_waiter_whose_loop_closed_does_not_stop_the_others() -> None:
    latch = Latch()
    loop = asyncio.new_event_loop()
    try:  # a task that stopped waiting leaves its future, on a loop then closed
        loop.run_until_complete(asyncio.wait((loop.create_task(latch.wait_async()),), timeout=0.01))
        for task in asyncio.all_tasks(loop):
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    finally:
        loop.close()
    woken = threading.Event()

    def waiter() -> None:
        latch.wait()
        woken.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    latch.set()
    thread.join(10)
    assert woken.is_set()

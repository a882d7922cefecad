"""The event-loop watch: a callback that holds the loop is reported, with where it was, while it holds."""

from __future__ import annotations

import asyncio
import logging
import threading

from prometheus_client import CollectorRegistry

from hazardwatch.loopwatch import LoopWatch


def test_a_callback_holding_the_loop_is_logged_with_its_stack_while_it_holds() -> None:
    reported = threading.Event()
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            reported.set()

    log = logging.getLogger("hazardwatch.loop")
    handler = Catch()
    log.addHandler(handler)
    registry = CollectorRegistry()
    watch = LoopWatch(registry, tick=0.01, stall=0.05)

    def a_stage_that_holds_the_loop() -> bool:  # stands for a long synchronous callback
        return reported.wait(10)  # released by the watcher's report, from its own thread

    async def go() -> bool:
        task = asyncio.create_task(watch.run())
        for _ in range(3):
            await asyncio.sleep(0)  # the watch is running
        held = a_stage_that_holds_the_loop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return held

    try:
        assert asyncio.run(go()), "a held loop was never reported"
    finally:
        log.removeHandler(handler)
    text = records[0].getMessage()
    assert "held for" in text and "a_stage_that_holds_the_loop" in text  # names the code that holds it
    assert registry.get_sample_value("hazardwatch_event_loop_stalls_total") == 1.0

"""The batcher on its own: a request whose caller went away is never run."""

import asyncio
import time

import numpy as np

from netc.serving.batcher import Batcher
from netc.serving.stats import ModelStats


def test_cancelled_requests_are_skipped_and_others_still_run():
    ran: list[float] = []

    def slow_run(inputs):
        time.sleep(0.05)  # long enough for the test to cancel the queued request
        ran.extend(float(v) for v in inputs["x"].ravel())
        return {"y": inputs["x"] * 2}

    async def scenario():
        batcher = Batcher(
            "slow",
            slow_run,
            batching=False,
            max_batch=1,
            max_delay_s=0.0,
            preferred=(),
            max_queue=8,
            instances=1,
            stats=ModelStats(),
        )
        try:
            calls = [
                asyncio.create_task(batcher.submit({"x": np.array([[float(i)]])}, 1, (), None))
                for i in range(3)
            ]
            await asyncio.sleep(0.01)  # request 0 is running, 1 and 2 are queued
            calls[1].cancel()  # the client of request 1 hangs up
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[1], asyncio.CancelledError)
    assert float(results[0]["y"][0, 0]) == 0.0 and float(results[2]["y"][0, 0]) == 4.0
    assert ran == [0.0, 2.0]  # request 1 never reached the model

"""Dynamic batching: concurrent requests share forward passes, each still gets its own answer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from visiontune.predict import Predictor
from visiontune.serve import DynamicBatcher, ServeConfig, create_app


class SlowDouble:
    """A stand-in model: doubles each item, 30 ms per pass whatever the batch, records the batch sizes."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.sizes.append(len(items))
        time.sleep(0.03)
        if self.fail_on in items:
            raise ValueError("bad item")
        return [2 * x for x in items]


async def _run(batcher: DynamicBatcher, items: list[int]) -> list[int | BaseException]:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_items_share_passes_up_to_max_batch() -> None:
    model = SlowDouble()
    results = asyncio.run(_run(DynamicBatcher(model, max_batch=8, max_wait_ms=20), list(range(20))))
    assert results == [2 * x for x in range(20)]
    assert sum(model.sizes) == 20 and max(model.sizes) == 8 and len(model.sizes) == 3  # 8 + 8 + 4
    assert len(model.threads) == 1  # the model only ever runs in the batcher's own thread


def test_max_batch_one_is_one_pass_per_item() -> None:
    model = SlowDouble()
    results = asyncio.run(_run(DynamicBatcher(model, max_batch=1, max_wait_ms=20), list(range(6))))
    assert results == [2 * x for x in range(6)] and model.sizes == [1] * 6


def test_a_lone_request_waits_no_longer_than_max_wait() -> None:
    model = SlowDouble()

    async def lone() -> float:
        batcher = DynamicBatcher(model, max_batch=32, max_wait_ms=50)
        await batcher.start()
        start = time.perf_counter()
        assert await batcher.submit(21) == 42
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return elapsed

    assert asyncio.run(lone()) < 1.0  # 50 ms of waiting and a 30 ms pass; not waiting for 31 more requests
    assert model.sizes == [1]


def test_a_failing_pass_fails_its_requests_and_the_next_pass_runs() -> None:
    async def scenario() -> tuple[list[int | BaseException], int]:
        batcher = DynamicBatcher(SlowDouble(fail_on=3), max_batch=8, max_wait_ms=10)
        await batcher.start()
        first = await asyncio.gather(*(batcher.submit(x) for x in range(5)), return_exceptions=True)
        after = await batcher.submit(10)
        await batcher.stop()
        return first, after

    first, after = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) for r in first) and after == 20


def test_concurrent_http_requests_share_forward_passes(
    served_predictor: Predictor, finetuned_run: Path, test_images: list[Path]
) -> None:
    """16 requests at once through the real app: far fewer passes than requests, every answer its own image's."""
    chosen = test_images[:16]
    expected = [p.label for p in served_predictor.predict(chosen, topk=1)]
    app = create_app(ServeConfig(model=str(finetuned_run), max_batch=32, max_wait_ms=250), predictor=served_predictor)
    calls: list[int] = []
    original: Callable = served_predictor.predict_pixels

    def counted(pixels, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(pixels))
        return original(pixels, **kwargs)

    async def scenario() -> tuple[list[str], dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                responses = await asyncio.gather(
                    *(client.post("/predict", files={"file": (p.name, p.read_bytes())}) for p in chosen)
                )
                health = (await client.get("/health")).json()
        return [r.json()["predictions"][0]["label"] for r in responses], health

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(served_predictor, "predict_pixels", counted)
        labels, health = asyncio.run(scenario())
    assert labels == expected  # in request order: no answer went to the wrong request
    startup, *served = calls  # the start-up check's one image (not counted as batching), then the requests
    assert startup == 1 and sum(served) == 16 and len(served) <= 4, calls
    assert health["batching"]["forward_passes"] == len(served) and health["batching"]["largest"] == max(served)

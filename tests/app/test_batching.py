"""Dynamic batching: concurrent requests share forward passes and get the one-by-one answers."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from httpx import Response

from app.batching import Batcher
from app.main import create_app
from app.overload import Admission, Overloaded
from app.testing import image_bytes
from tests.app.conftest import API_KEY, make_settings, upload


def test_concurrent_requests_are_batched_with_identical_answers(tmp_path: Path, small_weights: Path) -> None:
    n = 12
    with TestClient(create_app(make_settings(tmp_path, small_weights, batch_wait_ms=200.0, max_batch=16))) as client:
        alone = []
        for i in range(n):
            r = client.post("/classify?k=4", files=upload(f"{i}.png", image_bytes(i)))
            alone.append(r.json()["results"][0]["predictions"])
        batcher = client.app.state.service.batcher
        before = batcher.stats.batches
        with ThreadPoolExecutor(n) as pool:
            together = list(pool.map(lambda i: client.post("/classify?k=4", files=upload(f"{i}.png", image_bytes(i))), range(n)))
        passes = batcher.stats.batches - before
    assert all(r.status_code == 200 for r in together)
    assert passes < n, f"{n} concurrent requests took {passes} forward passes"
    for a, t in zip(alone, together, strict=True):
        got = t.json()["results"][0]["predictions"]
        assert [p["index"] for p in got] == [p["index"] for p in a]
        assert [p["probability"] for p in got] == pytest.approx([p["probability"] for p in a], abs=1e-5)


def _echo(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.flatten(1)[:, :2].clone(), batch.flatten(1).clone()


def test_the_batcher_waits_for_announced_requests_and_not_for_others() -> None:
    async def scenario(announce: bool) -> list[int]:
        sizes: list[int] = []
        b = Batcher(_echo, max_batch=8, max_wait_s=0.002, max_wait_busy_s=0.5, on_batch=lambda n, s: sizes.append(n))
        b.start()

        async def late_request() -> None:  # still "decoding" for 100 ms after the first one is queued
            if announce:
                async with b.admission.announce():
                    await asyncio.sleep(0.1)
                    await b.submit(torch.ones(1, 3, 2, 2))
            else:
                await asyncio.sleep(0.1)
                await b.submit(torch.ones(1, 3, 2, 2))

        await asyncio.gather(b.submit(torch.zeros(1, 3, 2, 2)), late_request())
        await b.stop()
        return sizes

    assert asyncio.run(scenario(announce=True)) == [2]  # one pass: it waited for the announced one
    assert asyncio.run(scenario(announce=False)) == [1, 1]  # 2 ms, then on without it


def test_a_request_that_fails_to_decode_does_not_hold_the_batch() -> None:
    async def scenario() -> tuple[list[int], float]:
        sizes: list[int] = []
        b = Batcher(_echo, max_batch=8, max_wait_s=0.002, max_wait_busy_s=5.0, on_batch=lambda n, s: sizes.append(n))
        b.start()

        async def failing() -> None:
            try:
                async with b.admission.announce():
                    await asyncio.sleep(0.05)
                    raise ValueError("not an image")
            except ValueError:
                pass

        start = time.perf_counter()
        await asyncio.gather(b.submit(torch.zeros(1, 3, 2, 2)), failing())
        took = time.perf_counter() - start
        await b.stop()
        return sizes, took

    sizes, took = asyncio.run(scenario())
    assert sizes == [1] and took < 1.0  # released when the announcement closed, not after 5 s


def test_exclusive_work_waits_for_the_running_forward() -> None:
    events: list[str] = []

    def slow_forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        events.append("forward start")
        time.sleep(0.2)
        events.append("forward end")
        return _echo(batch)

    async def scenario() -> None:
        b = Batcher(slow_forward, max_batch=1, max_wait_s=0.0, exclusive=True)
        b.start()
        job = asyncio.ensure_future(b.submit(torch.zeros(1, 3, 2, 2)))
        while "forward start" not in events:
            await asyncio.sleep(0.005)
        await b.run_between_forwards(events.append, "decode")
        await job
        await b.stop()

    asyncio.run(scenario())
    assert events == ["forward start", "forward end", "decode"]


def test_a_full_queue_refuses_at_once_and_the_queue_drains() -> None:
    def slow_forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(0.3)
        return _echo(batch)

    async def scenario() -> tuple[list[str], int]:
        b = Batcher(slow_forward, max_batch=2, max_wait_s=0.0, max_queue=4)
        b.start()
        first = asyncio.ensure_future(b.submit(torch.zeros(1, 3, 2, 2)))
        while b.stats.batches == 0 and b.queue_depth:  # the first one is in the forward pass
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(b.submit(torch.zeros(2, 3, 2, 2))) for _ in range(2)]  # 4 images wait
        await asyncio.sleep(0)
        depth = b.queue_depth
        outcomes = []
        started = time.perf_counter()
        try:
            await b.submit(torch.zeros(1, 3, 2, 2))
            outcomes.append("accepted")
        except Overloaded:
            outcomes.append(f"refused in {time.perf_counter() - started:.3f} s")
        for job in [first, *queued]:
            await job  # the ones already queued are all answered
        await b.submit(torch.zeros(1, 3, 2, 2))  # and once it has drained, new work is taken again
        await b.stop()
        return outcomes, depth

    outcomes, depth = asyncio.run(scenario())
    assert depth == 4 and len(outcomes) == 1 and outcomes[0].startswith("refused in 0.0")


def test_the_bound_counts_every_image_in_flight_until_its_forward_pass_is_done() -> None:
    """A request is in flight from its admission until its answer: reading, decoding, queued, or in the forward pass
    (before, a request in its pass no longer counted, and under overload as many again waited as the bound allowed);
    a request of several images counts each of them once they are known."""
    release = threading.Event()

    def held_forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        release.wait(10)
        return _echo(batch)

    async def scenario() -> list[str]:
        b = Batcher(held_forward, max_batch=8, max_wait_s=0.0, max_queue=4)
        b.start()
        seen: list[str] = []

        async def request(images: int) -> None:
            async with b.admission.announce():
                b.admission.admit()
                await b.submit(torch.zeros(images, 3, 2, 2))

        first = asyncio.ensure_future(request(3))  # three images, taken into a forward pass that is held
        while b._idle.is_set():  # until its forward pass has started
            await asyncio.sleep(0.005)
        seen.append(f"queued {b.queue_depth}")
        second = asyncio.ensure_future(request(1))  # 3 in flight: admitted, and makes 4
        await asyncio.sleep(0.05)
        try:
            await request(1)
            seen.append("third admitted")
        except Overloaded as e:
            seen.append(f"third refused: {e}")
        release.set()
        await asyncio.gather(first, second)
        await request(1)  # answered: nothing in flight any more
        seen.append(f"after: open {b.admission._open}, extra {b.admission._extra}")
        await b.stop()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == "queued 0"  # the first request's images are in the forward pass, not in the queue
    assert seen[1].startswith("third refused: 2 other requests (4 images)"), seen
    assert seen[2] == "after: open 0, extra 0"


def test_overload_is_503_with_retry_after_and_counted(tmp_path: Path, small_weights: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, small_weights, max_batch=1, max_queue_images=1, batch_wait_ms=0.0))) as client:
        service = client.app.state.service
        real = service.batcher.forward

        computing = threading.Event()

        def slow(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            computing.set()
            time.sleep(1.0)  # long enough for the five others to arrive during the pass, even on a loaded machine
            return real(batch)

        def post(i: int) -> Response:
            return client.post("/classify", files=upload(f"{i}.png", image_bytes(i)))

        service.batcher.forward = slow
        with ThreadPoolExecutor(6) as pool:
            # the first request is in its (slow) forward pass and still in flight, so the bound of 1 refuses the others
            # that arrive during the pass (one sent late enough to find the pass over would be taken)
            first = pool.submit(post, 0)
            assert computing.wait(10)
            answers = [first.result(), *pool.map(post, range(1, 6))]
        codes = sorted(r.status_code for r in answers)
        assert codes in ([200, 503, 503, 503, 503, 503], [200, 200, 503, 503, 503, 503]), codes
        refused = next(r for r in answers if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "capacity" in refused.json()["detail"]
        metrics = client.get("/metrics").text
        assert f"alexnet_overload_rejections_total {float(codes.count(503))}" in metrics


def test_a_full_queue_refuses_before_reading_the_upload(tmp_path: Path, small_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the queue is full, an upload is refused from its headers: its body is neither parsed nor decoded."""
    import app.uploads

    decoded: list[int] = []
    real_decode = app.uploads.decode_image
    monkeypatch.setattr(app.uploads, "decode_image", lambda data, **kw: decoded.append(len(data)) or real_decode(data, **kw))
    parsed: list[int] = []
    real_read = app.uploads.read_uploads

    async def counting_read(*args, **kw):  # type: ignore[no-untyped-def]
        parsed.append(1)
        return await real_read(*args, **kw)

    monkeypatch.setattr("app.state.read_uploads", counting_read)
    with TestClient(create_app(make_settings(tmp_path, small_weights, max_queue_images=1))) as client:
        batcher = client.app.state.service.batcher
        batcher.admission.queued = 1  # as if one image were waiting for the network
        refused = client.post("/classify", files=upload("a.png", image_bytes(1)))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert decoded == [] and parsed == []
        batcher.admission.queued = 0
        assert client.post("/classify", files=upload("a.png", image_bytes(1))).status_code == 200
        assert len(decoded) == 1 and len(parsed) == 1


def test_a_request_whose_client_has_gone_is_not_computed(tmp_path: Path, small_weights: Path) -> None:
    """The real app, driven at the ASGI level: the upload arrives whole, then the client hangs up (``http.disconnect``),
    as a client that gave up waiting does. Over real sockets the same happens, but when the server notices the
    hang-up races with its decoding, so the test sends the disconnect itself."""
    import httpx

    request = httpx.Request("POST", "http://testserver/classify", files=upload("a.png", image_bytes(1)))
    body = request.read()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/classify", "raw_path": b"/classify", "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }  # fmt: skip
    with TestClient(create_app(make_settings(tmp_path, small_weights))) as client:
        batcher = client.app.state.service.batcher
        incoming = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        before = batcher.stats.batches
        client.portal.call(client.app, scope, receive, send)  # type: ignore[union-attr]
        assert sent[0]["status"] == 499 and batcher.stats.batches == before  # answered, and no forward pass ran for it
        assert "alexnet_abandoned_requests_total 1.0" in client.get("/metrics").text
        assert client.post("/classify", files=upload()).status_code == 200 and batcher.stats.batches == before + 1


def test_no_route_dependency_runs_in_the_threadpool(tmp_path: Path, small_weights: Path) -> None:
    """FastAPI runs a plain ``def`` dependency (or a class) in its worker threads: two thread hops per request
    on /classify, which under overload queued behind the decoding and halved the accepted rate (bench/RESULTS.md).
    Every dependency of every route is a coroutine function."""
    import inspect

    from fastapi.routing import APIRoute

    from app.main import create_app

    def calls(dependant: Any) -> list[Any]:
        return [c for d in dependant.dependencies for c in (d.call, *calls(d))]

    def api_routes(routes: list[Any]) -> list[APIRoute]:  # through included routers, however FastAPI keeps them
        inner = lambda r: getattr(getattr(r, "original_router", None), "routes", None) or getattr(r, "routes", None) or []  # noqa: E731
        return [r for r in routes if isinstance(r, APIRoute)] + [
            a for r in routes if not isinstance(r, APIRoute) for a in api_routes(inner(r))
        ]

    app = create_app(make_settings(tmp_path, small_weights))
    routes = api_routes(app.routes)
    found = {c for r in routes for c in calls(r.dependant)}
    assert len(routes) > 10 and {"get_state", "get_model", "get_index", "require_api_key", "search_query"} <= {c.__name__ for c in found}
    assert [c for c in found if not inspect.iscoroutinefunction(c)] == []


def test_startup_puts_what_it_loaded_out_of_the_collectors_sight(tmp_path: Path, small_weights: Path) -> None:
    """A full garbage collection walked PyTorch's, FAISS's and FastAPI's objects and paused the server for about
    200 ms at a time, the p99 of every route; the lifespan freezes them once loaded, so a collection walks only
    what requests made."""
    import gc

    from app.main import create_app

    gc.unfreeze()
    with TestClient(create_app(make_settings(tmp_path, small_weights))) as client:
        assert client.get("/readyz").status_code == 200
        assert gc.get_freeze_count() > 100_000  # the loaded process, not a handful
        started = time.perf_counter()
        gc.collect()
        assert time.perf_counter() - started < 0.1  # (a full collection of the unfrozen test process takes longer)


def test_while_saturated_inference_is_refused_before_routing_and_images_after_the_key(
    tmp_path: Path, small_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under overload most requests are refused: POST /classify and /similar, which declare REFUSED_EARLY, are
    refused by a middleware, from the request line, without the route (its dependencies, its own admission) ever
    running; POST /images still checks its key first, so a wrong key is a 401 whatever the load."""
    admitted: list[int] = []
    real_admit = Admission.admit
    monkeypatch.setattr(Admission, "admit", lambda self: admitted.append(1) or real_admit(self))
    with TestClient(create_app(make_settings(tmp_path, small_weights, max_queue_images=1))) as client:
        batcher = client.app.state.service.batcher
        batcher.admission._open = 1  # as if one request were in flight
        for route in ("/classify", "/similar"):
            refused = client.post(route, files=upload("a.png", image_bytes(1)))
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            assert "at capacity" in refused.json()["detail"] and "the bound is 1" in refused.json()["detail"]
        assert admitted == []  # never reached a route
        assert client.get("/similar/1").status_code == 404  # (declares no early refusal: it runs no forward pass)
        assert client.post("/images", files=upload("a.png", image_bytes(1)), headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/images", files=upload("a.png", image_bytes(1)), headers={"X-API-Key": API_KEY}).status_code == 503
        assert admitted == [1]  # refused by its route's admission, after the key
        assert "alexnet_overload_rejections_total 3.0" in client.get("/metrics").text
        batcher.admission._open = 0
        assert client.post("/classify", files=upload("a.png", image_bytes(1))).status_code == 200

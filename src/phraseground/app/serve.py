"""``phraseground serve``: one web page and a JSON API over the ``Grounder`` (extra ``[web]``).

- ``GET /`` the page (shipped in the package, nothing from a CDN: it works offline), ``GET
  /static/...`` its script and style; ``GET /healthz``; ``GET /models``.
- ``POST /ground`` (multipart: ``image`` file, one or more ``phrases`` fields — a phrase, or a
  sentence whose ``[bracketed]`` parts are the phrases —, optional ``model``, optional
  ``overlays=1``) answers the Grounder's image record (DECISIONS §2), unchanged; with
  ``overlays=1`` each prediction's ``overlay`` names a heatmap layer (transparent PNG, magma)
  to fetch from ``GET /overlay/<token>/<k>.png`` (kept in a bounded in-memory store).

Limits, each a clear 4xx with ``{"detail": "..."}``: upload size (413, checked on the
Content-Length and on the bytes actually received), image type by its magic bytes (415),
decoded pixels (413, checked on the header before decoding), number and length of phrases and
unreadable images or unknown words (400), missing fields (422); too many waiting requests
(503). An error in one request never reaches the others or the server.

Concurrency: requests are read, checked and decoded concurrently in worker threads; the model
runs in one thread per model, one batch at a time (requests that arrive while it runs form the
next batch, up to ``batch_size`` images). At most ``max_active`` decoded images wait in memory.
"""
# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime

import asyncio
import collections
import concurrent.futures
import io
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from ..errors import PhrasegroundError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
"""serve's own default pixel limit (a 40 MP image decodes to 120 MB): lower than the library's."""

IMAGE_TYPES = {  # magic bytes -> name; everything else is refused with 415
    b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png", b"GIF87a": "gif", b"GIF89a": "gif",
    b"BM": "bmp", b"II*\x00": "tiff", b"MM\x00*": "tiff",
}


def image_type(data: bytes) -> str | None:
    """The image format by its magic bytes (jpeg, png, gif, bmp, tiff, webp), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, name in IMAGE_TYPES.items():
        if data.startswith(magic):
            return name
    return None


@dataclass
class Limits:
    """What one request may carry, and how much the server holds at once."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_phrases: int = 16
    max_phrase_chars: int = 300
    max_waiting: int = 64  # requests admitted (reading, decoding or queued); more -> 503
    max_active: int = 8  # decoded images held at once (the rest wait before decoding)
    overlay_store_bytes: int = 64 * 1024 * 1024


class HTTPProblem(Exception):
    """A request's error with its HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# ----------------------------------------------------------------------------- the model side


@dataclass
class _Job:
    prepared: Any
    heatmap: bool
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """One thread that runs a model one batch at a time over the jobs queued meanwhile.

    ``run_batch(prepared_list, heatmap) -> records``; a batch that fails is retried one job at
    a time, so a bad request fails alone.
    """

    def __init__(self, run_batch: Callable[[list, bool], list], batch_size: int = 8, name: str = "model") -> None:
        self.run_batch, self.batch_size = run_batch, max(1, batch_size)
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.batches = 0
        self.jobs = 0
        self._thread = threading.Thread(target=self._loop, name=f"phraseground-{name}", daemon=True)
        self._thread.start()

    def submit(self, prepared: Any, heatmap: bool) -> concurrent.futures.Future:
        job = _Job(prepared, heatmap)
        self.queue.put(job)
        return job.future

    def close(self) -> None:
        self.queue.put(None)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.batch_size:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
            for heat in (False, True):  # one call per heatmap setting
                part = [j for j in batch if j.heatmap is heat]
                if part:
                    self._run(part)

    def _run(self, batch: list[_Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            records = self.run_batch([j.prepared for j in live], live[0].heatmap)
            self.batches += 1
            self.jobs += len(live)
        except Exception as e:  # noqa: BLE001 - reported to the request, never kills the thread
            if len(live) == 1:
                live[0].future.set_exception(e)
                return
            for j in live:  # isolate the failing request: each alone
                try:
                    j.future.set_result(self.run_batch([j.prepared], j.heatmap)[0])
                    self.jobs += 1
                except Exception as one:  # noqa: BLE001
                    j.future.set_exception(one)
            return
        for j, r in zip(live, records):
            j.future.set_result(r)


class ModelSlot:
    """A named model, loaded on first use, with its batcher."""

    def __init__(self, name: str, load: Callable[[], Any], description: str, batch_size: int = 8) -> None:
        self.name, self.description, self._load, self.batch_size = name, description, load, batch_size
        self.grounder = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self.grounder is None:
                if self.error:
                    raise HTTPProblem(503, self.error)
                try:
                    self.grounder = self._load()
                except PhrasegroundError as e:
                    self.error = f"model {self.name!r} cannot be loaded: {e}"
                    raise HTTPProblem(503, self.error) from None
                self.batcher = Batcher(self._run, self.batch_size, self.name)
            return self.grounder

    def _run(self, batch: list, heatmap: bool) -> list[dict]:
        """The grounder on one batch; full-size heatmaps become small PNG layers at once (the
        batch's heatmaps are the only ones held), kept under ``"layer"`` until the answer."""
        records = self.grounder.run_prepared(batch, heatmap)
        if heatmap:
            for rec in records:
                for p in rec["predictions"]:
                    p["layer"] = heat_layer_png(p.pop("heatmap"))
        return records

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description, "loaded": self.grounder is not None}
        if self.grounder is not None:
            out.update(self.grounder.info())
            out["name"] = self.name
        if self.error:
            out["error"] = self.error
        return out


def default_slots(checkpoint: str | None, device: str = "auto", batch_size: int = 8,
                  demo_checkpoint: Path = Path("runs/demo/run/best.pt")) -> list[ModelSlot]:
    """The models ``serve`` offers: the checkpoint given; without one, ``cam`` (needs no
    training) and the demo's checkpoint when ``runs/demo`` holds one."""
    from ..predict import Grounder

    kw = {"device": device, "batch_size": batch_size}
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise PhrasegroundError(f"{path}: checkpoint not found")
        g = Grounder.from_checkpoint(path, **kw)  # load now: a bad file fails at start, not on a request
        slot = ModelSlot(g.model_name, lambda: g, f"checkpoint {path}", batch_size)
        slot.get()
        return [slot]
    slots = []
    from ..models.registry import list_models

    if "cam" in list_models() and hasattr(Grounder, "from_model"):
        slots.append(ModelSlot("cam", lambda: Grounder.from_model("cam", **kw),
                               "cam: class activation maps of the ImageNet classes nearest to the phrase (no training)",
                               batch_size))
    if demo_checkpoint.is_file():
        slots.append(ModelSlot("demo", lambda: Grounder.from_checkpoint(demo_checkpoint, **kw),
                               f"the demo's checkpoint {demo_checkpoint} (synthetic benchmark)", batch_size))
    if not slots:
        raise PhrasegroundError(f"no model to serve: give --checkpoint CKPT, or run `phraseground demo` first "
                                f"(it writes {demo_checkpoint})")
    return slots


# ----------------------------------------------------------------------------- overlays


class OverlayStore:
    """Heatmap layers of recent answers, bounded in bytes (oldest dropped first)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: collections.OrderedDict[str, list[bytes]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, pngs: list[bytes]) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._items[token] = pngs
            self.bytes += sum(map(len, pngs))
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self.bytes -= sum(map(len, old))
        return token

    def get(self, token: str, k: int) -> bytes | None:
        with self._lock:
            pngs = self._items.get(token)
            return pngs[k] if pngs is not None and 0 <= k < len(pngs) else None


def heat_layer_png(heatmap, max_side: int = 256) -> bytes:
    """A heatmap as a transparent PNG layer (magma, opacity growing with the heat)."""
    import torch

    from ..viz import heat_layer

    hm = torch.as_tensor(heatmap)
    h, w = hm.shape
    f = min(1.0, max_side / max(h, w))
    if f < 1:  # area-average down: the browser scales the layer back up smoothly
        hm = torch.nn.functional.adaptive_avg_pool2d(hm[None, None].float(), (max(1, round(h * f)), max(1, round(w * f))))[0, 0]
    buf = io.BytesIO()
    heat_layer(hm).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- the app


def _static_dir() -> Path:
    return Path(str(resources.files("phraseground.app") / "static"))


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413, by its Content-Length or
    when more bytes arrive than allowed (chunked uploads), before the form is parsed."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_413(send, self.limit)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await _send_413(send, self.limit)


class _TooLarge(Exception):
    pass


async def _send_413(send, limit: int) -> None:
    import json

    body = json.dumps({"detail": f"upload too large: the limit is {limit // (1024 * 1024)} MB"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(slots: list[ModelSlot], limits: Limits | None = None):
    """The FastAPI application serving ``slots`` (the first is the default model)."""
    try:
        from fastapi import FastAPI, File, Form, Request, UploadFile
        from fastapi.concurrency import run_in_threadpool
        from fastapi.responses import FileResponse, JSONResponse, Response
        from fastapi.staticfiles import StaticFiles
    except ImportError as e:  # pragma: no cover - exercised without the extra
        raise PhrasegroundError(f"serve needs the web extra: pip install 'phraseground[web]' ({e.name} is missing)") from None
    from ..data.images import image_size, load_image
    from ..predict.records import json_ready

    limits = limits or Limits()
    if not slots:
        raise PhrasegroundError("no model to serve")
    by_name = {s.name: s for s in slots}
    store = OverlayStore(limits.overlay_store_bytes)
    stats = {"requests": 0, "answered": 0, "errors_4xx": 0, "errors_5xx": 0, "started": time.time()}
    waiting = {"n": 0}
    semaphores: dict[int, asyncio.Semaphore] = {}  # one per event loop (test clients start their own)

    def semaphore() -> asyncio.Semaphore:
        return semaphores.setdefault(id(asyncio.get_running_loop()), asyncio.Semaphore(limits.max_active))

    app = FastAPI(title="phraseground", version=_version(), docs_url="/docs", redoc_url=None)
    app.add_middleware(_BodyLimit, limit=limits.max_upload_bytes + 256 * 1024)  # the form fields' share
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")

    @app.exception_handler(HTTPProblem)
    async def _problem(_request: Request, exc: HTTPProblem):
        stats["errors_5xx" if exc.status >= 500 else "errors_4xx"] += 1
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(_static_dir() / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": [s.info() for s in slots], "waiting": waiting["n"],
                "uptime_s": round(time.time() - stats["started"], 1),
                **{k: v for k, v in stats.items() if k != "started"},
                "limits": {"max_upload_mb": limits.max_upload_bytes / 2**20, "max_pixels": limits.max_pixels,
                           "max_phrases": limits.max_phrases, "max_phrase_chars": limits.max_phrase_chars}}

    @app.get("/models")
    async def models():
        return {"default": slots[0].name, "models": [s.info() for s in slots],
                "limits": {"max_upload_mb": limits.max_upload_bytes / 2**20, "max_pixels": limits.max_pixels,
                           "max_phrases": limits.max_phrases, "max_phrase_chars": limits.max_phrase_chars}}

    @app.get("/overlay/{token}/{k}.png", include_in_schema=False)
    async def overlay(token: str, k: int):
        png = store.get(token, k)
        if png is None:
            raise HTTPProblem(404, "overlay not found (expired: ground the image again)")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    def check_phrases(phrases: list[str]) -> list[str]:
        texts = [p.strip() for p in phrases if p is not None and p.strip()]
        if not texts:
            raise HTTPProblem(400, "no phrase given: send one or more 'phrases' fields")
        if len(texts) > limits.max_phrases:
            raise HTTPProblem(400, f"too many phrases: {len(texts)} > {limits.max_phrases}")
        for t in texts:
            if len(t) > limits.max_phrase_chars:
                raise HTTPProblem(400, f"phrase too long: {len(t)} characters > {limits.max_phrase_chars}")
        return texts

    def decode(grounder, data: bytes, filename: str, texts: list[str]):
        kind = image_type(data)
        if kind is None:
            raise HTTPProblem(415, f"{filename}: not an image of a supported type (jpeg, png, webp, gif, bmp, tiff)")
        try:
            image_size(data, max_pixels=limits.max_pixels, name=filename)  # header only: bombs stop here
            image = load_image(data, max_pixels=limits.max_pixels, name=filename)
        except PhrasegroundError as e:
            raise HTTPProblem(413 if "exceeds the limit" in str(e) else 400, str(e)) from None
        try:
            prepared = grounder.prepare(image, texts)
        except PhrasegroundError as e:
            raise HTTPProblem(400, str(e)) from None
        prepared.name = filename
        return prepared

    def finish(record: dict, overlays: bool) -> dict:
        if overlays:
            token = store.put([p.pop("layer") for p in record["predictions"]])
            for k, p in enumerate(record["predictions"]):
                p["overlay"] = f"/overlay/{token}/{k}.png"
        return json_ready(record)

    @app.post("/ground")
    async def ground(image: UploadFile = File(...), phrases: list[str] = Form(...),
                     model: str | None = Form(None), overlays: bool = Form(False)):
        stats["requests"] += 1
        slot = by_name.get(model or slots[0].name)
        if slot is None:
            raise HTTPProblem(400, f"unknown model {model!r}; served: {', '.join(by_name)}")
        texts = check_phrases(phrases)
        if waiting["n"] >= limits.max_waiting:
            raise HTTPProblem(503, f"busy: {waiting['n']} requests waiting; retry shortly")
        waiting["n"] += 1
        try:
            grounder = await run_in_threadpool(slot.get)
            async with semaphore():  # until here the upload stays spooled (on disk beyond 1 MB)
                data = await image.read(limits.max_upload_bytes + 1)
                if len(data) > limits.max_upload_bytes:
                    raise HTTPProblem(413, f"upload too large: the limit is {limits.max_upload_bytes // 2**20} MB")
                if not data:
                    raise HTTPProblem(400, "empty upload")
                prepared = await run_in_threadpool(decode, grounder, data, image.filename or "upload", texts)
                del data
                try:
                    record = await asyncio.wrap_future(slot.batcher.submit(prepared, overlays))
                except PhrasegroundError as e:
                    raise HTTPProblem(400, str(e)) from None
                except Exception as e:  # noqa: BLE001 - one request's failure, the server goes on
                    log.exception("grounding failed")
                    raise HTTPProblem(500, f"grounding failed: {type(e).__name__}: {e}") from None
                del prepared
                out = finish(record, overlays)
        finally:
            waiting["n"] -= 1
        stats["answered"] += 1
        return JSONResponse(out)

    app.state.slots, app.state.limits, app.state.stats, app.state.store = slots, limits, stats, store
    return app


def _version() -> str:
    from .. import __version__

    return __version__


def run_server(slots: list[ModelSlot], host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
               log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn)."""
    try:
        import uvicorn
    except ImportError:
        raise PhrasegroundError("serve needs the web extra: pip install 'phraseground[web]' (uvicorn is missing)") from None
    app = create_app(slots, limits)
    print(f"phraseground serve: {', '.join(s.name for s in slots)} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)

"""serve: the JSON API answers the Grounder's records, every limit is a clear 4xx, a bad request
never harms the others, the model runs one batch at a time while requests are served."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="serve needs the [web] extra (fastapi)")
from fastapi.testclient import TestClient  # noqa: E402

from phraseground.app.serve import Batcher, Limits, ModelSlot, create_app, image_type  # noqa: E402
from phraseground.predict import Grounder  # noqa: E402
from phraseground.predict.records import check_record, json_ready  # noqa: E402


def _png(w=96, h=64, colour=(200, 30, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", (w, h), (240, 240, 240))
    im.paste(colour, (w // 4, h // 4, w // 2, h // 2))
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def grounder(model_checkpoints):
    return Grounder.from_checkpoint(model_checkpoints["mlmcs"], device="cpu")


@pytest.fixture(scope="module")
def client(grounder):
    slot = ModelSlot("mlmcs", lambda: grounder, "tiny test checkpoint")
    app = create_app([slot], Limits(max_upload_bytes=300_000, max_pixels=1_000_000, max_phrases=3, max_phrase_chars=40))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _ground(client, data=None, phrases=("a red star",), name="x.png", **fields):
    files = {"image": (name, _png() if data is None else data, "application/octet-stream")}
    return client.post("/ground", files=files, data={"phrases": list(phrases), **fields})


def test_page_health_and_models(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text and "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "fetch(\"/ground\"" in js.text and "https://" not in js.text
    assert client.get("/static/style.css").status_code == 200
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"][0]["name"] == "mlmcs"
    assert client.get("/models").json()["default"] == "mlmcs"


def test_ground_returns_exactly_the_grounders_record(client, grounder):
    data = _png()
    r = _ground(client, data, ["a red star", "[a small square] left of [a circle]"])
    assert r.status_code == 200, r.text
    rec = r.json()
    check_record(rec)
    want = json_ready(grounder(Image.open(io.BytesIO(data)), ["a red star", "[a small square] left of [a circle]"]))
    assert [p["label"] for p in rec["predictions"]] == ["a red star", "a small square", "a circle"]
    assert rec["image"] == "x.png" and (rec["width"], rec["height"]) == (96, 64)
    assert rec["predictions"] == want["predictions"]


def test_overlays_are_heat_layers_to_fetch(client):
    rec = _ground(client, phrases=["a red star", "a blue square"], overlays="true").json()
    for k, p in enumerate(rec["predictions"]):
        assert p["overlay"].endswith(f"/{k}.png") and "heatmap" not in p
        png = client.get(p["overlay"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        layer = Image.open(io.BytesIO(png.content))
        assert layer.mode == "RGBA" and layer.size == (96, 64)
    assert client.get("/overlay/nope/0.png").status_code == 404


@pytest.mark.parametrize("case, status, words", [
    ("too_big_upload", 413, "upload too large"),
    ("not_an_image", 415, "not an image"),
    ("svg", 415, "not an image"),
    ("truncated_png", 400, "x.png"),
    ("bomb_pixels", 413, "exceeds the limit"),
    ("empty", 400, "empty upload"),
    ("no_phrase", 400, "no phrase"),
    ("too_many_phrases", 400, "too many phrases"),
    ("too_long_phrase", 400, "phrase too long"),
    ("unknown_words", 400, "no word is known"),
    ("unbalanced", 400, "unbalanced"),
    ("unknown_model", 400, "unknown model"),
])
def test_limits_and_bad_uploads_are_clear_4xx(client, case, status, words):
    data, phrases, fields = _png(), ["a red star"], {}
    if case == "too_big_upload":
        data = np.random.default_rng(0).bytes(400_000)
    elif case == "not_an_image":
        data = b"hello, I am a text file named x.png\n" * 10
    elif case == "svg":
        data = b"<svg xmlns='http://www.w3.org/2000/svg'></svg>"
    elif case == "truncated_png":
        data = _png(200, 200)[:300]
    elif case == "bomb_pixels":
        data = _png(1200, 1000)  # 1.2 M pixels > the 1 M limit, a small file
    elif case == "empty":
        data = b""
    elif case == "no_phrase":
        phrases = ["   "]
    elif case == "too_many_phrases":
        phrases = ["a", "b", "c", "d"]
    elif case == "too_long_phrase":
        phrases = ["red " * 20]
    elif case == "unknown_words":
        phrases = ["zyzzyva qwxz"]
    elif case == "unbalanced":
        phrases = ["[a red star"]
    elif case == "unknown_model":
        fields = {"model": "nope"}
    r = _ground(client, data, phrases, **fields)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert _ground(client).status_code == 200  # and the server goes on


def test_missing_fields_are_422(client):
    assert client.post("/ground", data={"phrases": ["a red star"]}).status_code == 422
    assert client.post("/ground", files={"image": ("x.png", _png(), "image/png")}).status_code == 422


def test_upload_limit_checked_on_content_length(client):
    r = client.post("/ground", content=b"x" * 10, headers={"content-length": str(10**9),
                                                          "content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"]


def test_image_types_by_magic_bytes():
    assert image_type(_png()) == "png" and image_type(_png(fmt="JPEG")) == "jpeg"
    assert image_type(_png(fmt="WEBP")) == "webp" and image_type(_png(fmt="GIF")) == "gif"
    assert image_type(b"<svg") is None and image_type(b"") is None


def test_concurrent_requests_one_batch_at_a_time(grounder):
    """16 requests from 8 threads: all answered; the model never runs two batches at once,
    and requests that wait together share a batch."""
    running, peak, sizes = [0], [0], []
    lock = threading.Lock()

    class Watched:
        def __init__(self, g):
            self.g = g

        def __getattr__(self, name):
            return getattr(self.g, name)

        def run_prepared(self, batch, heatmap=False):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                sizes.append(len(batch))
            time.sleep(0.05)
            try:
                return self.g.run_prepared(batch, heatmap)
            finally:
                with lock:
                    running[0] -= 1

    app = create_app([ModelSlot("m", lambda: Watched(grounder), "watched", batch_size=4)])
    with TestClient(app) as c:
        results = []

        def worker(i):
            for j in range(2):
                r = _ground(c, _png(64 + i, 48 + j), ["a red star"])
                results.append((r.status_code, r.json()["width"] if r.status_code == 200 else r.text))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [s for s, _ in results] == [200] * 16
    assert sorted(w for _, w in results) == sorted(64 + i for i in range(8) for _ in range(2))
    assert peak[0] == 1 and sum(sizes) == 16 and max(sizes) > 1


def test_batcher_isolates_a_failing_request():
    gate, calls = threading.Event(), []

    def run(batch, heatmap):
        calls.append(list(batch))
        if batch == ["a"]:
            gate.wait(5)  # hold the model while the next requests queue up
        if "bad" in batch:
            raise ValueError("boom")
        return [x.upper() for x in batch]

    b = Batcher(run, batch_size=8)
    first = b.submit("a", False)
    time.sleep(0.2)
    futures = [b.submit(x, False) for x in ("b", "bad", "c")]
    gate.set()
    assert first.result(5) == "A"
    assert futures[0].result(5) == "B" and futures[2].result(5) == "C"
    with pytest.raises(ValueError, match="boom"):
        futures[1].result(5)
    assert calls == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]  # one batch, then one by one
    b.close()


def test_models_offered_without_a_checkpoint(tmp_path, model_checkpoints, capsys):
    from phraseground.app.cli import main
    from phraseground.app.serve import default_slots
    from phraseground.errors import PhrasegroundError
    from phraseground.models.registry import list_models

    assert main(["serve", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: checkpoint not found" in capsys.readouterr().err
    slots = default_slots(None, device="cpu", demo_checkpoint=model_checkpoints["mlmcs"])
    names = [s.name for s in slots]
    assert names[-1] == "demo" and not slots[-1].info()["loaded"]  # loaded on first use
    assert ("cam" in names) == ("cam" in list_models())
    if "cam" not in list_models():
        with pytest.raises(PhrasegroundError, match="run `phraseground demo` first"):
            default_slots(None, demo_checkpoint=tmp_path / "none.pt")


def test_fifty_concurrent_requests_with_bad_uploads_on_a_live_server(grounder):
    """A real uvicorn, 50 requests at once (10 of them bad): every good one gets its record,
    every bad one its 4xx, and the server answers afterwards."""
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    from conftest import live_server

    limits = Limits(max_upload_bytes=200_000, max_pixels=1_000_000, max_phrases=3)
    app = create_app([ModelSlot("mlmcs", lambda: grounder, "tiny", batch_size=4)], limits)
    bad = [(b"plain text, not an image\n" * 20, ["a red star"], 415), (_png(300, 300)[:400], ["a red star"], 400),
           (np.random.default_rng(1).bytes(300_000), ["a red star"], 413), (_png(1200, 1000), ["a red star"], 413),
           (_png(), ["a", "b", "c", "d"], 400)]
    work = [(_png(64 + 4 * i, 48 + 2 * i), ["a red star", "[a small square] left of [a circle]"][: 1 + i % 2], 200)
            for i in range(40)] + bad * 2
    order = np.random.default_rng(0).permutation(len(work))
    work = [work[i] for i in order]
    with live_server(app) as url:
        def send(item):
            data, phrases, _ = item
            r = httpx.post(url + "/ground", files={"image": ("x.png", data)}, data={"phrases": phrases}, timeout=300)
            return r.status_code, r.json()

        with ThreadPoolExecutor(50) as ex:
            answers = list(ex.map(send, work))
        health = httpx.get(url + "/healthz").json()
    for (data, phrases, want), (status, body) in zip(work, answers):
        assert status == want, body
        if want == 200:
            assert body["width"] == Image.open(io.BytesIO(data)).width
            assert len(body["predictions"]) == len(phrases) + (1 if "[" in phrases[-1] else 0)
        else:
            assert isinstance(body["detail"], str) and body["detail"]
    assert health["status"] == "ok" and health["answered"] == 40 and health["errors_5xx"] == 0

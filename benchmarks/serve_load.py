"""Load on `phraseground serve`: rounds of N concurrent requests, some of them bad uploads.

    python benchmarks/serve_load.py --checkpoint runs/demo/run/best.pt [--requests 50] [--bad 10] [--rounds 3]

Starts the server in its own process on a free port, then each round sends ``--requests``
requests at once from as many threads: good ones (synthetic JPEG/PNG scenes from 128 px to
6 megapixels, 1-4 phrases, half of them asking for overlays) and ``--bad`` bad ones (a text
file, a truncated JPEG, a 25 MB upload, a 48-megapixel PNG over the pixel limit, 20 phrases,
unknown words). It checks that every good request got its record, every bad one its 4xx, and
that the server still answers ``/healthz``; it reports latencies and the server's resident
memory (VmRSS after each round, VmHWM = peak) from /proc (Linux).
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene(w: int, h: int, seed: int, fmt: str = "JPEG") -> bytes:
    """A textured background with a few coloured shapes, encoded."""
    rng = np.random.default_rng(seed)
    base = (rng.random((h // 8 + 1, w // 8 + 1, 3)) * 60 + 150).astype(np.uint8)
    im = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    d = ImageDraw.Draw(im)
    for _ in range(3):
        r = int(min(w, h) * rng.uniform(0.1, 0.2))
        x, y = int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        d.ellipse([x - r, y - r, x + r, y + r], fill=colour) if rng.random() < 0.5 else d.rectangle(
            [x - r, y - r, x + r, y + r], fill=colour)
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=90) if fmt == "JPEG" else im.save(buf, format=fmt)
    return buf.getvalue()


def payloads(n_good: int, n_bad: int) -> list[tuple[str, bytes, list[str], bool, int]]:
    """(name, bytes, phrases, overlays, expected status) for one round."""
    sizes = [(128, 128), (320, 240), (640, 480), (1280, 960), (3000, 2000)]
    phrases = [["the red star"], ["a blue square", "a small circle"],
               ["[a large red circle] to the left of [a square]"], ["a green triangle", "a star", "a circle", "a square"]]
    out = []
    for i in range(n_good):
        w, h = sizes[i % len(sizes)]
        fmt = "PNG" if i % 7 == 3 else "JPEG"
        out.append((f"good{i}.{fmt.lower()}", scene(w, h, i, fmt), phrases[i % len(phrases)], i % 2 == 0, 200))
    big = Image.new("RGB", (8000, 6000), (120, 120, 120))  # 48 MP, compresses to a small PNG
    buf = io.BytesIO()
    big.save(buf, format="PNG", compress_level=9)
    bad_kinds = [
        ("notes.jpg", b"this is a text file named .jpg\n" * 40, ["the red star"], 415),
        ("cut.jpg", scene(640, 480, 1)[:2000], ["the red star"], 400),
        ("huge.bin", os.urandom(25 * 2**20), ["the red star"], 413),
        ("bomb.png", buf.getvalue(), ["the red star"], 413),
        ("many.jpg", scene(128, 128, 2), [f"a star {k}" for k in range(20)], 400),
        ("unknown.jpg", scene(128, 128, 3), ["zyzzyva qwxz"], 400),
    ]
    for k in range(n_bad):
        name, data, ph, status = bad_kinds[k % len(bad_kinds)]
        out.append((name, data, ph, False, status))
    order = np.random.default_rng(0).permutation(len(out))  # bad ones mixed in
    return [out[i] for i in order]


def memory(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MB
    return fields


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/demo/run/best.pt")
    ap.add_argument("--requests", type=int, default=50, help="requests per round, sent at once")
    ap.add_argument("--bad", type=int, default=10, help="bad uploads among them")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "phraseground.app.cli", "serve", "--checkpoint", args.checkpoint,
                               "--port", str(port), "--device", args.device, "-q"])
    try:
        t0 = time.time()
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.time() - t0 > 300:
                sys.exit("server did not start")
            time.sleep(0.5)
        print(f"server up in {time.time() - t0:.1f} s; memory {memory(server.pid)}", flush=True)
        work = payloads(args.requests - args.bad, args.bad)

        def send(item):
            name, data, phrases, overlays, want = item
            t = time.time()
            with httpx.Client(timeout=600) as c:
                r = c.post(url + "/ground", files={"image": (name, data, "application/octet-stream")},
                           data={"phrases": phrases, "overlays": str(overlays).lower()})
                if r.status_code == 200 and overlays:  # the page fetches the layers too
                    for p in r.json()["predictions"]:
                        assert c.get(url + p["overlay"]).status_code == 200
            ok = r.status_code == want and (want != 200 or len(r.json()["predictions"]) >= 1)
            return name, want, r.status_code, ok, time.time() - t, r.text[:160] if not ok else ""

        for rnd in range(args.rounds):
            t = time.time()
            with ThreadPoolExecutor(len(work)) as ex:
                results = list(ex.map(send, work))
            wall = time.time() - t
            alive = httpx.get(url + "/healthz", timeout=10).json()
            good = [r for r in results if r[1] == 200]
            lat = sorted(r[4] for r in good)
            bad_ok = sum(r[3] for r in results if r[1] != 200)
            mem = memory(server.pid)
            print(f"round {rnd + 1}: {len(results)} concurrent requests in {wall:.1f} s; good answered "
                  f"{sum(r[3] for r in good)}/{len(good)} (latency p50 {statistics.median(lat):.1f} s, "
                  f"max {lat[-1]:.1f} s); bad answered with their 4xx {bad_ok}/{len(results) - len(good)}; "
                  f"server alive: {alive['status']}, answered {alive['answered']}; "
                  f"RSS {mem['VmRSS']:.0f} MB, peak {mem['VmHWM']:.0f} MB", flush=True)
            for r in results:
                if not r[3]:
                    print("   unexpected:", r[0], "wanted", r[1], "got", r[2], r[5])
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()

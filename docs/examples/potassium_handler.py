"""A minimal Potassium-style model server on stasis: load and warm up at start-up, answer
requests, unload the weights when idle, restore them on the next request.

    python docs/examples/potassium_handler.py model.stasis --port 8000 --idle 300
    curl -d '{"input_ids": [1, 2, 3]}' localhost:8000/

The image is a Hugging Face model snapshotted with stasis.snapshot(model, "model.stasis").
Unloading releases the weights' memory but keeps their addresses, so reload() puts the
bytes back under the very tensors the model holds: nothing is rebuilt. Standard library
and stasis only (the HTTP server is http.server: an example, not a production server).
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

import stasis
import stasis.transformers


class ModelHandler:
    """Holds the model; one request at a time runs it, and an idle timer unloads it."""

    def __init__(self, image, *, idle_s=300.0, device="cpu", clock=time.monotonic):
        self._clock = clock
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self.model = stasis.transformers.from_image(image, device=device)
        self.device = device
        self.loaded = True
        self.warmup()
        self._last = clock()
        self._stop = threading.Event()
        threading.Thread(target=self._idle_loop, daemon=True).start()

    def warmup(self):
        """One inference at start-up: lazy initialisation is paid before the first user."""
        self._infer([0])

    def __call__(self, request):
        with self._lock:
            if not self.loaded:  # the first request after an idle unload
                stasis.reload(self.model)
                self.loaded = True
            self._last = self._clock()
            return {"next_token": self._infer(request["input_ids"])}

    def close(self):
        self._stop.set()

    def _infer(self, ids):
        with torch.no_grad():
            logits = self.model(torch.tensor([ids], device=self.device)).logits
        return int(logits[0, -1].argmax())

    def _idle_loop(self):
        while not self._stop.wait(min(self._idle_s / 4, 1.0)):
            with self._lock:  # never while a request runs: its tensors are in use
                if self.loaded and self._clock() - self._last >= self._idle_s:
                    stasis.unload(self.model)
                    self.loaded = False


def serve(handler, port):
    class Http(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                answer, code = handler(json.loads(body)), 200
            except (ValueError, KeyError, TypeError) as e:
                answer, code = {"error": str(e)}, 400
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer(("127.0.0.1", port), Http).serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--idle", type=float, default=300.0, help="seconds idle before unloading")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    serve(ModelHandler(a.image, idle_s=a.idle, device=a.device), a.port)

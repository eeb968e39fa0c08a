"""`sonodistill serve`: a local review page (standard-library HTTP server) for one model.

POST /api/predict with the raw file as body and `X-File-Extension: .mp4` (the page sends only the extension:
file names never leave the browser, and are never used as paths), and for segmentation models optionally
`X-Pixel-Size-Mm: 0.12` (areas in mm^2 and head circumference where the file does not say its pixel size).
Uploads are limited in size (413) and type (extension AND content sniffing, 415), written under a fresh
`tempfile.TemporaryDirectory` with a generated name and deleted before the response is sent. DICOM metadata is
never read into the response.
"""

from __future__ import annotations

import base64
import html
import ipaddress
import json
import logging
import math
import secrets
import tempfile
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from sonodistill.errors import SonoDistillError
from sonodistill.serve.kinds import get_model_kind
from sonodistill.serve.loading import LoadedModel
from sonodistill.serve.predict import ensemble_warnings, failure_message, log_failure

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 200 * 1024 * 1024
MAX_GIF_FRAMES = 150
_CHUNK = 1 << 20
DRAIN_LIMIT = 64 * 1024 * 1024  # a refused body up to this size is read and dropped, so the client sees the answer
DEFAULT_READ_TIMEOUT = 30.0  # seconds a client may stay silent while sending a request (408 / closed after)
DEFAULT_MAX_UPLOADS = 4  # uploads received or analysed at the same time; more get 503 at once
BUSY_DRAIN_S = 1.0  # a 503'd body is read and dropped for at most this long, so the client sees the answer

# extension -> content types it may hold (by magic bytes)
EXTENSION_TYPES: dict[str, set[str]] = {
    ".mp4": {"mp4"}, ".m4v": {"mp4"}, ".mov": {"mp4"}, ".avi": {"avi"}, ".mkv": {"matroska"},
    ".webm": {"matroska"}, ".dcm": {"dicom"}, ".dicom": {"dicom"}, ".png": {"png"}, ".jpg": {"jpeg"},
    ".jpeg": {"jpeg"}, ".bmp": {"bmp"}, ".tif": {"tiff"}, ".tiff": {"tiff"},
}


def sniff_type(head: bytes) -> str | None:
    """Content type from the first bytes of a file (at least 132 for DICOM), or None when unknown."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


class UploadRejected(Exception):
    """An upload refused: carries the HTTP status, a message safe to show and the upload's display name
    (`input`, set once the upload is an input to analyse, then the answer is {"input", "error"})."""

    def __init__(self, status: HTTPStatus, message: str, input_name: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.input_name = input_name

    def payload(self) -> dict[str, Any]:
        return {"error": self.message} if self.input_name is None else {"input": self.input_name,
                                                                         "error": self.message}


# ------------------------------------------------------------------------------------------- analysis
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def score_plot_svg(per_frame: list[list[float]], classes: list[str], fps: float | None,
                   width: int = 640, height: int = 220) -> str:
    """Inline SVG: one line per class, probability (0..1) against frame index (seconds in the axis label)."""
    p = np.asarray(per_frame, dtype=np.float64)
    n = p.shape[0]
    left, right, top, bottom = 40, 130, 10, 30
    pw, ph = width - left - right, height - top - bottom

    def xy(i: int, v: float) -> str:
        x = left + (pw * i / max(n - 1, 1))
        return f"{x:.1f},{top + ph * (1.0 - v):.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="per-frame class probabilities">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>']
    for v in (0.0, 0.5, 1.0):
        y = top + ph * (1 - v)
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v:.1f}</text>')
    unit = f"frame (of {n}; {n / fps:.1f} s at {fps:g} fps)" if fps else f"frame (of {n})"
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" font-size="11" text-anchor="middle">'
                 f"{html.escape(unit)}</text>")
    for k, c in enumerate(classes):
        color = PALETTE[k % len(PALETTE)]
        if n == 1:
            parts.append(f'<circle cx="{left + pw / 2:.1f}" cy="{top + ph * (1 - p[0, k]):.1f}" r="3" fill="{color}"/>')
        else:
            pts = " ".join(xy(i, float(p[i, k])) for i in range(n))
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        ly = top + 14 * (k + 1)
        parts.append(f'<line x1="{left + pw + 10}" y1="{ly - 4}" x2="{left + pw + 26}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="3"/>')
        parts.append(f'<text x="{left + pw + 30}" y="{ly}" font-size="11">{html.escape(str(c))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _gif_frames(n: int) -> np.ndarray:
    return np.unique(np.rint(np.linspace(0, n - 1, min(n, MAX_GIF_FRAMES))).astype(np.int64))


def heatmap_problem(model: LoadedModel) -> str | None:
    """Why the review page shows no Grad-CAM for `model`, or None when it can."""
    from sonodistill.explain.gradcam import grad_cam_problem

    kind = get_model_kind(model.task)
    if not (kind.heatmaps and model.members):
        why = f"; {kind.no_heatmaps_because}" if kind.no_heatmaps_because else ""
        return ("Grad-CAM needs a classifier served from a run directory "
                f"(this is a {model.task} model, backend {model.backend}){why}")
    return grad_cam_problem(model.members[0])


def analyse_file(model: LoadedModel, path: Path, display_name: str, explain: bool = True,
                 pixel_size_mm: float | None = None) -> dict[str, Any]:
    """Prediction, score plot (SVG) and the clip as a GIF for one file: a segmentation model's masks (and head
    ellipse) over the original frames, else the model's input with a Grad-CAM overlay when possible.
    `pixel_size_mm`: the file's pixel size for areas and head circumference (None: the file's own, if any)."""
    from sonodistill.explain.overlay import gif_bytes, overlay
    from sonodistill.serve.kinds import PredictOptions
    from sonodistill.serve.predict import clip_heatmaps, predict_prepared, prepare, read_input
    from sonodistill.serve.segmentation_view import segmentation_frames

    t0 = time.perf_counter()
    item = prepare(model, read_input(path), display_name)
    result = predict_prepared(model, item, PredictOptions(pixel_size_mm=pixel_size_mm))
    out: dict[str, Any] = {"result": result, "plot_svg": None, "gif": None, "heatmap": None, "note": None}
    if "per_frame" in result:
        out["plot_svg"] = score_plot_svg(result["per_frame"], model.classes, item.fps)
    idx = _gif_frames(item.clip.shape[0])
    frames = item.clip[idx]
    problem = heatmap_problem(model)
    if "masks" in result:
        frames = segmentation_frames(item.frames, result, idx)
        out["heatmap"] = "Predicted mask: each class tinted and outlined in its colour" + (
            "; magenta: the ellipse fitted to the head's outline, whose perimeter gives the head circumference"
            if model.head_circumference is not None else "")
    elif explain and problem is None:
        target = model.classes.index(result["prediction"])
        cam = clip_heatmaps(model, item.clip, target)
        frames = overlay(item.clip, cam)[idx]
        out["heatmap"] = f"Grad-CAM for class '{result['prediction']}' (last backbone stage)"
    elif explain:
        out["note"] = f"no heat map: {problem}"
    fps = (item.fps or 10.0) * len(idx) / item.clip.shape[0]
    out["gif"] = "data:image/gif;base64," + base64.b64encode(gif_bytes(frames, fps)).decode("ascii")
    out["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return out


def parse_pixel_size(text: str | None) -> float | None:
    """The `X-Pixel-Size-Mm` header: None when absent or blank, else a positive finite number of mm per pixel
    (ValueError saying what was sent otherwise)."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"X-Pixel-Size-Mm must be a positive number of mm per pixel, got {text.strip()[:40]!r}")
    return value


# ------------------------------------------------------------------------------------------- HTTP
class ReviewServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the model, the limits and a lock that serialises inference."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: LoadedModel, max_upload: int = DEFAULT_MAX_UPLOAD,
                 tmp_root: str | Path | None = None, explain: bool = True,
                 read_timeout: float | None = DEFAULT_READ_TIMEOUT, max_uploads: int = DEFAULT_MAX_UPLOADS) -> None:
        if read_timeout is not None and read_timeout <= 0:
            raise ValueError(f"read_timeout must be > 0 seconds (or None), got {read_timeout}")
        if max_uploads < 1:
            raise ValueError(f"max_uploads must be >= 1, got {max_uploads}")
        super().__init__(address, ReviewHandler)
        self.model = model
        self.max_upload = int(max_upload)
        self.tmp_root = str(tmp_root) if tmp_root is not None else None
        self.explain = explain
        self.read_timeout = read_timeout
        self.max_uploads = int(max_uploads)
        self.upload_slots = threading.BoundedSemaphore(self.max_uploads)
        self.lock = threading.Lock()
        self.warnings = ensemble_warnings(model)
        for w in self.warnings:
            log.warning("%s", w)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer is routine; anything else is logged with its traceback."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            log.debug("client closed the connection early")
            return
        log.exception("error while answering a request")

    def info(self) -> dict[str, Any]:
        m = self.model
        kind = get_model_kind(m.task)
        return {"task": m.task, "output": kind.output, "classes": m.classes, "backend": m.backend,
                "members": m.member_names,
                "source": Path(m.source).name, "input_kind": m.input_kind, "max_upload_bytes": self.max_upload,
                "extensions": sorted(EXTENSION_TYPES), "heatmaps": self.explain and heatmap_problem(m) is None,
                "max_uploads": self.max_uploads, "warnings": self.warnings}


class ReviewHandler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "sonodistill-review"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        """Every read from the client times out after the server's `read_timeout` (a stalled upload is dropped)."""
        self.timeout = self.server.read_timeout
        super().setup()

    # -- logging: method, path without query, status; never headers, bodies or file names ----------
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info("%s %s %s", self.command, urlsplit(self.path).path, int(code) if str(code).isdigit() else code)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.warning("request error %s", args[0] if args and isinstance(args[0], int) else "")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http: %s", self.command)

    # -- responses ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy",
                             "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any], close: bool = False) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json; charset=utf-8", close)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, INDEX_HTML.encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/app.js":
            self._send(200, APP_JS.encode("utf-8"), "text/javascript; charset=utf-8")
        elif path == "/api/info":
            self._json(200, self.server.info())
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/api/predict":
            self._json(404, {"error": "not found"}, close=True)
            return
        if not self.server.upload_slots.acquire(blocking=False):
            self._linger_discard()
            self._json(int(HTTPStatus.SERVICE_UNAVAILABLE),
                       {"error": f"busy: {self.server.max_uploads} upload(s) in progress; try again shortly"},
                       close=True)
            return
        try:
            payload = self._handle_upload()
        except UploadRejected as exc:
            self._json(int(exc.status), exc.payload(), close=True)
            return
        finally:
            self.server.upload_slots.release()
        self._json(200, payload)

    # -- the upload ---------------------------------------------------------------------------
    def _handle_upload(self) -> dict[str, Any]:
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.strip().isdigit():
            raise UploadRejected(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        length = int(length_text)
        if length > self.server.max_upload:
            self._discard(length)
            raise UploadRejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"upload of {length} bytes exceeds the limit of {self.server.max_upload} bytes")
        if length == 0:
            raise UploadRejected(HTTPStatus.BAD_REQUEST, "empty upload")
        try:
            pixel_size_mm = parse_pixel_size(self.headers.get("X-Pixel-Size-Mm"))
        except ValueError as exc:
            self._discard(length)
            raise UploadRejected(HTTPStatus.BAD_REQUEST, str(exc)) from None
        ext = (self.headers.get("X-File-Extension") or "").strip().lower()
        if not ext.startswith("."):
            ext = "." + ext
        if ext not in EXTENSION_TYPES:
            self._discard(length)
            raise UploadRejected(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                                 f"unsupported file type; allowed extensions: {', '.join(sorted(EXTENSION_TYPES))}")
        with tempfile.TemporaryDirectory(prefix="sonodistill-upload-", dir=self.server.tmp_root) as tmp:
            path = Path(tmp) / (secrets.token_hex(8) + ext)  # generated name: the client's name is never used
            head = self._receive(path, length)
            kind = sniff_type(head)
            if kind not in EXTENSION_TYPES[ext]:
                raise UploadRejected(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                                     f"content does not match the extension {ext} "
                                     f"(detected: {kind or 'unknown'})")
            name = "upload" + ext
            with self.server.lock:
                try:
                    out = analyse_file(self.server.model, path, name, self.server.explain, pixel_size_mm)
                except Exception as exc:  # noqa: BLE001 - every failure is this upload's {"input", "error"} answer
                    log_failure(name, exc)
                    message = failure_message(exc).replace(str(path), name).replace(tmp, "")
                    status = (HTTPStatus.UNPROCESSABLE_ENTITY if isinstance(exc, SonoDistillError)
                              else HTTPStatus.INTERNAL_SERVER_ERROR)
                    raise UploadRejected(status, message, name) from None
        out["model"] = self.server.info()
        return out

    def _linger_discard(self) -> None:
        """Before a 503: drop what the client already sent (for at most BUSY_DRAIN_S), so it can read the answer."""
        length_text = (self.headers.get("Content-Length") or "").strip()
        if not length_text.isdigit():
            return
        self.connection.settimeout(BUSY_DRAIN_S)
        try:
            self._discard(int(length_text))
        except TimeoutError:
            pass  # a silent client: answer now and close
        finally:
            self.connection.settimeout(self.timeout)

    def _discard(self, length: int) -> None:
        """Read and drop a refused body (up to DRAIN_LIMIT), so closing the socket does not reset the answer."""
        remaining = length if length <= DRAIN_LIMIT else 0
        while remaining > 0:
            chunk = self.rfile.read(min(_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)

    def _receive(self, path: Path, length: int) -> bytes:
        """Copy exactly `length` body bytes to `path`; returns the first 132 bytes."""
        remaining = length
        head = b""
        with open(path, "wb") as f:
            while remaining > 0:
                try:
                    chunk = self.rfile.read(min(_CHUNK, remaining))
                except TimeoutError:
                    raise UploadRejected(HTTPStatus.REQUEST_TIMEOUT,
                                         f"upload stalled: no data for {self.server.read_timeout:g} s "
                                         f"after {length - remaining} of {length} bytes") from None
                if not chunk:
                    raise UploadRejected(HTTPStatus.BAD_REQUEST, "upload ended before Content-Length bytes")
                if len(head) < 132:
                    head += chunk[: 132 - len(head)]
                f.write(chunk)
                remaining -= len(chunk)
        return head


def make_server(model: LoadedModel, host: str = "127.0.0.1", port: int = 8765,
                max_upload: int = DEFAULT_MAX_UPLOAD, tmp_root: str | Path | None = None,
                explain: bool = True, read_timeout: float | None = DEFAULT_READ_TIMEOUT,
                max_uploads: int = DEFAULT_MAX_UPLOADS) -> ReviewServer:
    """A ready (not yet serving) review server; port 0 picks a free port (see `server.server_address`).

    read_timeout: seconds a client may stay silent mid-request (then 408, or the connection is closed);
    max_uploads: uploads received or analysed at once (more are answered 503 at once)."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning("serving on %s: reachable from other machines; uploads are not authenticated", host)
    return ReviewServer((host, port), model, max_upload, tmp_root, explain, read_timeout, max_uploads)


# ------------------------------------------------------------------------------------------- the page
INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sonodistill review</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; max-width: 1100px; color: #222; }
 header p { color: #555; margin-top: 0; }
 .warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: .4rem .8rem; }
 #drop { border: 2px dashed #999; padding: 1rem; margin: 1rem 0; }
 #status { margin: .5rem 0; min-height: 1.2em; }
 #status.error { color: #b00020; font-weight: bold; }
 .grid { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
 table { border-collapse: collapse; } td, th { padding: .2rem .6rem; text-align: left; }
 .bar { background: #1f77b4; height: .8rem; display: inline-block; }
 #overlay img { width: 336px; image-rendering: pixelated; border: 1px solid #ccc; }
 #prediction-class { font-size: 1.4rem; font-weight: bold; }
</style></head>
<body>
<header><h1>sonodistill review</h1>
<p id="model-info">loading model information...</p>
<p class="warn">Research use only: not a medical device. Files are analysed on this computer and deleted
after each answer; patient data in DICOM headers is never shown.</p></header>
<div id="drop">
 <input type="file" id="file" accept=".mp4,.m4v,.mov,.avi,.mkv,.webm,.dcm,.dicom,.png,.jpg,.jpeg,.bmp,.tif,.tiff">
 <span id="pixel-size-block" hidden><label for="pixel-size">Pixel size (mm)</label>
  <input id="pixel-size" type="number" min="0" step="any" placeholder="from the file" size="10"></span>
 <button id="analyse" type="button">Analyse</button>
</div>
<div id="status" role="status"></div>
<section id="results" hidden>
 <div class="grid">
  <div><h2>Prediction</h2><div id="prediction"><div id="prediction-class"></div><p id="input-warning" hidden></p>
   <table id="probabilities"></table></div>
   <div id="findings-block" hidden><h3>Findings</h3><table id="findings"></table></div>
   <div id="description-block" hidden><h3>Description</h3><p id="description"></p><p id="nearest"></p></div>
   <div id="segmentation-block" hidden><h3>Segmentation</h3><p id="segmentation-summary"></p>
    <table id="segmentation"></table><p id="segmentation-more"></p></div></div>
  <div id="overlay"><h2>Clip</h2><img alt="clip with heat map overlay"><p id="heatmap-note"></p></div>
 </div>
 <div id="plot-block"><h2>Score per frame</h2><div id="plot"></div></div>
 <details><summary>Raw JSON</summary><pre id="raw"></pre></details>
</section>
<script src="/app.js"></script>
</body></html>
"""

APP_JS = """'use strict';
let info = null;
const $ = (id) => document.getElementById(id);
function status(text, error) { const s = $('status'); s.textContent = text; s.className = error ? 'error' : ''; }
fetch('/api/info').then(r => r.json()).then(j => {
  info = j;
  $('model-info').textContent = `Model: ${j.source} (${j.task}, ${j.backend}, ${j.members.length} member(s)); ` +
    (j.classes.length ? `classes: ${j.classes.join(', ')}` : `output: ${j.output}`) +
    `; uploads up to ${Math.round(j.max_upload_bytes / 1048576)} MB.`;
  if (j.warnings && j.warnings.length) { $('model-info').textContent += ` Warning: ${j.warnings.join(' ')}`; }
  $('pixel-size-block').hidden = j.task !== 'segmentation';
});
const SEGMENTATION_ROWS = 30;
function showSegmentation(r) {
  const masks = r.masks || [];
  $('segmentation-block').hidden = masks.length === 0;
  if (!masks.length) { return; }
  const foreground = r.classes_in_mask.slice(1);
  const measured = masks.some(m => 'head_circumference_mm' in m);
  const summary = [];
  if (r.pixel_spacing_mm) {
    summary.push(`Pixel size ${r.pixel_spacing_mm.map(v => v.toPrecision(4)).join(' x ')} mm ` +
      (r.pixel_spacing_source === 'dicom' ? '(from the DICOM).' : '(as entered).'));
  } else {
    summary.push('Pixel size unknown: areas are fractions of the image (enter the pixel size for mm).');
  }
  if (r.head_circumference_unavailable) { summary.push(`No head circumference: ${r.head_circumference_unavailable}.`); }
  $('segmentation-summary').textContent = summary.join(' ');
  const table = $('segmentation'); table.replaceChildren();
  const head = table.createTHead().insertRow();
  for (const h of ['Frame', ...foreground.map(c => `${c} area`), ...(measured ? ['Head circumference'] : []), 'Note']) {
    const th = document.createElement('th'); th.textContent = h; head.append(th); }
  const body = table.createTBody();
  for (const m of masks.slice(0, SEGMENTATION_ROWS)) {
    const tr = body.insertRow(); tr.insertCell().textContent = m.frame;
    for (const c of foreground) {
      const share = `${(100 * m.area_fraction[c]).toFixed(1)} %`;
      tr.insertCell().textContent = m.area_mm2 ? `${m.area_mm2[c].toFixed(1)} mm² (${share})` : share; }
    if (measured) {
      tr.insertCell().textContent = typeof m.head_circumference_mm === 'number'
        ? `${m.head_circumference_mm.toFixed(1)} mm` : 'none'; }
    tr.insertCell().textContent = m.head_circumference_failure || m.head_circumference_warning || '';
  }
  $('segmentation-more').textContent = masks.length > SEGMENTATION_ROWS
    ? `... and ${masks.length - SEGMENTATION_ROWS} more frames in the raw JSON below.` : '';
  const first = masks[0];
  $('prediction-class').textContent = masks.length === 1 && typeof first.head_circumference_mm === 'number'
    ? `Head circumference ${first.head_circumference_mm.toFixed(1)} mm`
    : `Masks of ${masks.length} frame(s): ${foreground.join(', ')}`;
}
function extensionOf(name) { const i = name.lastIndexOf('.'); return i >= 0 ? name.slice(i).toLowerCase() : ''; }
async function uploadExtension(file) {
  // scanner exports name DICOM files IM0001 or by their UID (1.2.840...): 'DICM' at byte 128 makes them .dcm
  const ext = extensionOf(file.name);
  if (info && info.extensions.includes(ext)) { return ext; }
  const magic = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return String.fromCharCode(...magic) === 'DICM' ? '.dcm' : ext;
}
function show(payload) {
  const r = payload.result;
  $('results').hidden = false;
  $('prediction-class').textContent = r.prediction !== undefined ? r.prediction
    : r.embedding ? `Embedding of ${r.embedding_dim} dimensions (a features model: no class probabilities; ` +
      'the vector is in the raw JSON below)' : '';
  $('input-warning').hidden = !r.input_warning;
  $('input-warning').textContent = r.input_warning ? `Warning: ${r.input_warning}.` : '';
  const table = $('probabilities'); table.replaceChildren();
  for (const [c, p] of Object.entries(r.probabilities || {})) {
    const tr = table.insertRow(); tr.insertCell().textContent = c;
    const cell = tr.insertCell(); const bar = document.createElement('span');
    bar.className = 'bar'; bar.style.width = `${Math.round(p * 150)}px`; cell.append(bar);
    tr.insertCell().textContent = p.toFixed(3);
  }
  const findings = r.findings || [];
  $('findings-block').hidden = findings.length === 0 && !(r.categorical || []).length;
  const ft = $('findings'); ft.replaceChildren();
  const row = (name, p, verdict) => { const tr = ft.insertRow(); tr.insertCell().textContent = name;
    const cell = tr.insertCell();
    if (typeof p === 'number') { const bar = document.createElement('span'); bar.className = 'bar';
      bar.style.width = `${Math.round(p * 150)}px`; cell.append(bar); }
    tr.insertCell().textContent = typeof p === 'number' ? p.toFixed(3) : '';
    tr.insertCell().textContent = verdict; };
  for (const f of findings) {
    if (typeof f === 'string') { row(f, null, ''); }
    else if (typeof f.probability === 'number') {
      row(f.label || f.name, f.probability, f.present === undefined ? '' : f.present ? 'present' : 'absent'); }
    else { row(JSON.stringify(f), null, ''); }
  }
  for (const c of r.categorical || []) {
    row(`${c.name}: ${c.prediction}`, (c.probabilities || {})[c.prediction], 'most probable class'); }
  if (r.entities !== undefined && r.prediction === undefined) {
    $('prediction-class').textContent = `Findings present (threshold ${r.threshold}): ` +
      (r.entities.length ? r.entities.join(', ') : 'none'); }
  showSegmentation(r);
  $('description-block').hidden = !r.description; $('description').textContent = r.description || '';
  $('nearest').textContent = r.nearest_report ? `Nearest training report (score ${r.nearest_report.score}): ` +
    r.nearest_report.text : '';
  $('plot-block').hidden = !payload.plot_svg;  // only classifiers score frames
  $('plot').innerHTML = payload.plot_svg || '';
  const img = $('overlay').querySelector('img');
  if (payload.gif) { img.src = payload.gif; img.hidden = false; } else { img.hidden = true; }
  $('heatmap-note').textContent = payload.heatmap || payload.note || '';
  $('raw').textContent = JSON.stringify(r, null, 1);
}
async function analyse() {
  const file = $('file').files[0];
  if (!file) { status('Choose a file first.', true); return; }
  const ext = await uploadExtension(file);
  if (info && !info.extensions.includes(ext)) { status(`Unsupported file type "${ext}".`, true); return; }
  if (info && file.size > info.max_upload_bytes) { status('File too large.', true); return; }
  status('Analysing...', false); $('analyse').disabled = true;
  try {
    const headers = { 'X-File-Extension': ext, 'Content-Type': 'application/octet-stream' };
    const pixelSize = $('pixel-size').value.trim();
    if (info && info.task === 'segmentation' && pixelSize) { headers['X-Pixel-Size-Mm'] = pixelSize; }
    const resp = await fetch('/api/predict', { method: 'POST', body: file, headers });
    const payload = await resp.json();
    if (!resp.ok) { status(`Error ${resp.status}: ${payload.error}`, true); return; }
    show(payload); status(`Done in ${payload.elapsed_s} s.`, false);
  } catch (e) { status(`Request failed: ${e}`, true); }
  finally { $('analyse').disabled = false; }
}
$('analyse').addEventListener('click', analyse);
"""

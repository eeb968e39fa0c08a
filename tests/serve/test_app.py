"""The review server's HTTP API without a browser: uploads, limits, temp files, DICOM privacy."""

from __future__ import annotations

import json
import logging
import urllib.request

import numpy as np
import pytest

from sonodistill.serve.app import make_server, score_plot_svg, sniff_type
from sonodistill.serve.loading import load_model

from .conftest import CLASSES, post_upload, serving, synthetic_frames, write_dicom


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    uploads = tmp_path_factory.mktemp("uploads")
    srv = make_server(load_model(tiny_run), "127.0.0.1", 0, max_upload=2_000_000, tmp_root=uploads)
    with serving(srv):
        yield srv, uploads


def _get(srv, path: str) -> tuple[int, str, bytes]:
    host, port = srv.server_address[:2]
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=30) as r:
        return r.status, r.headers["Content-Type"], r.read()


def test_page_and_info(server):
    srv, _ = server
    status, ctype, body = _get(srv, "/")
    assert status == 200 and ctype.startswith("text/html") and b"sonodistill review" in body
    assert _get(srv, "/app.js")[0] == 200
    info = json.loads(_get(srv, "/api/info")[2])
    assert info["classes"] == CLASSES and info["max_upload_bytes"] == 2_000_000 and ".dcm" in info["extensions"]
    assert srv.server_address[0] == "127.0.0.1"


def test_upload_video_gives_prediction_plot_and_heatmap(server, video_file):
    srv, uploads = server
    status, payload = post_upload(srv, video_file.read_bytes(), ".mp4")
    assert status == 200, payload
    r = payload["result"]
    assert set(r["probabilities"]) == set(CLASSES) and r["frames"] == 20 and r["input"] == "upload.mp4"
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert payload["plot_svg"].startswith("<svg") and payload["plot_svg"].count("<polyline") == 3
    assert payload["gif"].startswith("data:image/gif;base64,") and "Grad-CAM" in payload["heatmap"]
    assert list(uploads.iterdir()) == []  # the upload's temporary folder is gone


def test_rejections(server, video_file, tmp_path):
    srv, uploads = server
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
    assert post_upload(srv, b"MZ" + b"\x00" * 300, ".exe")[0] == 415
    assert post_upload(srv, png, None)[0] == 415  # no extension given
    status, payload = post_upload(srv, png, ".mp4")  # extension and content disagree
    assert status == 415 and "does not match" in payload["error"]
    status, payload = post_upload(srv, b"\x00" * 2_000_001, ".mp4")
    assert status == 413 and "exceeds" in payload["error"]
    status, payload = post_upload(srv, b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500, ".mp4")  # sniffs as mp4, undecodable
    assert status == 422 and "upload.mp4" in payload["error"] and str(uploads) not in payload["error"]
    assert list(uploads.iterdir()) == []


def test_dicom_patient_fields_never_leave_the_server(server, tmp_path, caplog):
    srv, uploads = server
    caplog.set_level(logging.DEBUG)
    dcm = write_dicom(tmp_path / "Doe_Jane.dcm", synthetic_frames(10, 64, 80), patient_name="Doe^Jane")
    assert b"Doe^Jane" in dcm.read_bytes()
    status, payload = post_upload(srv, dcm.read_bytes(), ".dcm")
    assert status == 200 and payload["result"]["frames"] == 10
    text = json.dumps(payload) + caplog.text
    for secret in ("Doe", "Jane", "JD-0042", "19700101"):
        assert secret not in text
    assert "POST /api/predict 200" in caplog.text  # requests are logged, without any file detail
    assert list(uploads.iterdir()) == []


def test_sniffing_and_plot():
    assert sniff_type(b"\x00" * 128 + b"DICM") == "dicom"
    assert sniff_type(b"\x00\x00\x00\x20ftypisom") == "mp4"
    assert sniff_type(b"RIFF\x00\x00\x00\x00AVI LIST") == "avi"
    assert sniff_type(b"\xff\xd8\xff\xe0") == "jpeg" and sniff_type(b"hello") is None
    svg = score_plot_svg(np.array([[0.2, 0.8], [0.6, 0.4]]).tolist(), ["<b>", "ok"], 25.0)
    assert "&lt;b&gt;" in svg and "<b>" not in svg and svg.count("<polyline") == 2


# -- issue 16: any failure is the upload's {"input", "error"}; stalled uploads time out; a cap on uploads ---------
def test_hostile_avi_and_unexpected_errors_answer_input_and_error(server, tmp_path, video_file, monkeypatch):
    from sonodistill.serve import app as app_module
    from tests.data.hostile import write_huge_frame_count_avi

    srv, uploads = server
    status, payload = post_upload(srv, write_huge_frame_count_avi(tmp_path / "huge.avi").read_bytes(), ".avi")
    assert status == 422 and payload["input"] == "upload.avi" and "2147483647 frames" in payload["error"]
    assert str(uploads) not in payload["error"]

    def explode(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(app_module, "analyse_file", explode)
    status, payload = post_upload(srv, video_file.read_bytes(), ".mp4")
    assert status == 500 and payload == {"input": "upload.mp4", "error": "RuntimeError: decoder exploded"}
    monkeypatch.undo()
    assert post_upload(srv, video_file.read_bytes(), ".mp4")[0] == 200  # the server still answers
    assert list(uploads.iterdir()) == []


def _stalled_upload(srv, length: int = 10_000):
    """A client that sends the headers of an upload and then nothing."""
    import socket

    sock = socket.create_connection(srv.server_address[:2], timeout=10)
    sock.sendall(f"POST /api/predict HTTP/1.1\r\nHost: x\r\nX-File-Extension: .mp4\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode() + b"\x00\x00\x00\x18ftypmp42")
    return sock


def _status_of(sock) -> tuple[int, dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_stalled_uploads_time_out_and_excess_uploads_get_503(tiny_run, tmp_path, video_file):
    import time

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    srv = make_server(load_model(tiny_run), "127.0.0.1", 0, tmp_root=uploads, read_timeout=1.0, max_uploads=2)
    with serving(srv):
        stalled = [_stalled_upload(srv), _stalled_upload(srv)]
        time.sleep(0.3)
        assert len(list(uploads.iterdir())) == 2  # both are being received
        t0 = time.perf_counter()
        status, payload = post_upload(srv, video_file.read_bytes(), ".mp4")
        assert status == 503 and "2 upload(s) in progress" in payload["error"]
        assert time.perf_counter() - t0 < 0.9  # answered at once, not after the stalled ones time out
        for sock in stalled:
            status, payload = _status_of(sock)
            assert status == 408 and "stalled" in payload["error"]
            sock.close()
        assert time.perf_counter() - t0 < 5
        assert list(uploads.iterdir()) == []  # their temporary folders are gone
        assert post_upload(srv, video_file.read_bytes(), ".mp4")[0] == 200  # the slots are free again
        assert json.loads(_get(srv, "/api/info")[2])["max_uploads"] == 2

"""Readers: every lus-blues video and shared DICOM decodes with the listed shape; bad files raise DataError."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sonodistill.data.readers import (
    _gray_into,
    Video,
    files_in_folder,
    is_supported_file,
    probe_file,
    read_clip,
    read_dicom,
    read_image,
    read_mask,
    read_video,
    rgb_to_gray,
)
from sonodistill.errors import DataError

SECRET_NAME, SECRET_ID, SECRET_BIRTH = "Secretname^Jane", "PID-4711", "19700101"


# -- helpers --------------------------------------------------------------------------------------
def _write_video(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, fps: int = 10, **options: str) -> None:
    with av.open(str(path), "w", options=options) as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)


def _moving_square(t: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    fr = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        fr[i, 8:24, 4 + 3 * i : 20 + 3 * i] = (220, 180, 140)
    return fr


def _write_dicom(path: Path, arr: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int = 8,
                 **tags: object) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = SECRET_NAME, SECRET_ID, SECRET_BIRTH
    for k, v in tags.items():
        setattr(ds, k, v)
    if arr is not None:
        ds.set_pixel_data(arr, photometric, bits_stored)
    ds.save_as(path, enforce_file_format=True)


def _assert_no_phi(text: str) -> None:
    for secret in (SECRET_NAME, "Secretname", SECRET_ID, SECRET_BIRTH):
        assert secret not in text


# -- lus-blues videos -----------------------------------------------------------------------------
def _lus_rows(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / "lus-blues" / "labels.csv")


def _check_lus(shared_data: Path, rows: pd.DataFrame) -> None:
    for r in rows.itertuples():
        v = read_video(shared_data / "lus-blues" / r.file)
        assert v.frames.dtype == np.uint8
        assert v.frames.shape == (r.n_frames, r.height, r.width), r.file
        assert v.fps == pytest.approx(r.fps)


def test_lus_blues_three_videos(shared_data: Path) -> None:
    rows = _lus_rows(shared_data)
    _check_lus(shared_data, rows.iloc[[0, len(rows) // 2, len(rows) - 1]])


@pytest.mark.slow
def test_lus_blues_all_videos_frame_counts(shared_data: Path) -> None:
    rows = _lus_rows(shared_data)
    assert len(rows) == 287
    _check_lus(shared_data, rows)


def test_video_colour_and_luma_agree(shared_data: Path) -> None:
    path = shared_data / "lus-blues" / "videos" / "patient_10_L1.mp4"
    gray, rgb = read_video(path).frames, read_video(path, grayscale=False).frames
    assert rgb.shape == gray.shape + (3,)
    diff = np.abs(rgb_to_gray(rgb).astype(int) - gray)
    assert diff.mean() < 1.0 and diff.max() <= 2


@pytest.mark.parametrize(
    "fmt", ["yuv420p", "yuv422p", "yuv444p", "yuvj420p", "yuvj444p", "nv12", "nv21", "gray", "yuv410p", "rgb24"]
)
@pytest.mark.parametrize("color_range", [0, 1, 2])
def test_gray_fast_path_equals_swscale(fmt: str, color_range: int) -> None:
    """The luma-plane shortcut gives exactly frame.to_ndarray(format='gray') for all 256 values."""
    h, w = 32, 40
    rng = np.random.default_rng(0)
    frame = av.VideoFrame(w, h, fmt)
    for i, plane in enumerate(frame.planes):
        data = rng.integers(0, 256, plane.buffer_size, dtype=np.uint8)
        if i == 0 and fmt != "rgb24":
            rows = np.zeros((plane.height, plane.line_size), np.uint8)
            rows[:, :w] = np.arange(h * w).reshape(h, w) % 256
            data[: rows.size] = rows.ravel()
        plane.update(data.tobytes())
    frame.color_range = color_range
    out = np.empty((h, w), np.uint8)
    _gray_into(frame, out)
    np.testing.assert_array_equal(out, frame.to_ndarray(format="gray"))


def test_read_video_equals_plain_pyav_gray(shared_data: Path) -> None:
    path = shared_data / "lus-blues" / "videos" / "patient_10_L1.mp4"
    with av.open(str(path)) as c:
        ref = np.stack([f.to_ndarray(format="gray") for f in c.decode(video=0)])
    np.testing.assert_array_equal(read_video(path).frames, ref)


@pytest.mark.parametrize(
    "name,codec,pix_fmt,tol",
    [("a.mp4", "libx264", "yuv420p", 2.0), ("a.avi", "mpeg4", "yuv420p", 2.0),
     ("a.mov", "mjpeg", "yuvj420p", 2.0), ("a.gif", "gif", "rgb8", 4.0)],
)
def test_video_containers(tmp_path: Path, name: str, codec: str, pix_fmt: str, tol: float) -> None:
    fr = _moving_square()
    _write_video(tmp_path / name, fr, codec, pix_fmt)
    v = read_clip(tmp_path / name)
    assert v.frames.shape == (12, 48, 64) and v.frames.dtype == np.uint8
    assert v.fps == pytest.approx(10.0)
    assert np.abs(v.frames.astype(float) - rgb_to_gray(fr)).mean() < tol
    # the square moves: its column centroid increases by ~3 px per frame
    cols = [np.nonzero(f.max(0) > 100)[0].mean() for f in v.frames]
    assert np.allclose(np.diff(cols), 3, atol=1.0)


def test_probe_video_and_dicom(shared_data: Path) -> None:
    r = probe_file(shared_data / "lus-blues" / "videos" / "patient_10_L1.mp4")
    assert (r.frames, r.height, r.width, r.channels, r.fps) == (100, 350, 350, 3, 25.0)
    r = probe_file(shared_data / "dicom" / "examples_ybr_color.dcm")
    assert (r.frames, r.height, r.width, r.channels) == (30, 240, 320, 3)
    assert r.fps == pytest.approx(1000 / 33.333)
    r = probe_file(shared_data / "dicom" / "JPGLosslessP14SV1_1s_1f_8b.dcm")
    assert (r.frames, r.height, r.width, r.channels, r.fps) == (1, 768, 1024, 1, None)


# -- DICOM ----------------------------------------------------------------------------------------
def _inventory(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / "dicom" / "inventory.csv")


def test_all_dicoms_decode_with_expected_shape(shared_data: Path) -> None:
    inv = _inventory(shared_data)
    assert len(inv) == 11
    for r in inv.itertuples():
        expected = tuple(int(v) for v in r.decoded_shape.split("x"))
        colour = expected[-1] == 3 and r.photometric != "MONOCHROME2"
        v = read_dicom(shared_data / "dicom" / r.file, grayscale=not colour)
        assert v.frames.dtype == np.uint8, r.file
        got = v.frames.shape[1:] if r.frames == 1 else v.frames.shape
        assert got == expected, r.file
        assert v.frames.shape[0] == r.frames
        assert v.frames.max() > 100, r.file  # not an all-dark decode
        if pd.notna(r.frame_time_ms):
            assert v.fps == pytest.approx(1000.0 / r.frame_time_ms)
        else:
            assert v.fps is None


def test_dicom_palette_16bit_scaled_to_uint8(shared_data: Path) -> None:
    v = read_dicom(shared_data / "dicom" / "gdcm-US-ALOKA-16.dcm", grayscale=False)
    assert v.frames.dtype == np.uint8 and v.frames.shape == (1, 480, 640, 3)
    assert v.frames.max() >= 240  # LUT full scale 65535 -> 255, not clipped to a few levels
    assert len(np.unique(v.frames)) > 30


def test_dicom_ybr_gray_is_luma_of_rgb(shared_data: Path) -> None:
    path = shared_data / "dicom" / "examples_ybr_color.dcm"
    gray, rgb = read_dicom(path).frames, read_dicom(path, grayscale=False).frames
    assert rgb.shape == gray.shape + (3,)
    assert np.abs(rgb_to_gray(rgb).astype(int) - gray).mean() < 1.0


def test_dicom_palette_gray_matches_colour(shared_data: Path) -> None:
    path = shared_data / "dicom" / "OBXXXX1A.dcm"
    gray, rgb = read_dicom(path).frames, read_dicom(path, grayscale=False).frames
    np.testing.assert_array_equal(gray, rgb_to_gray(rgb))
    multi = read_dicom(shared_data / "dicom" / "OBXXXX1A_2frame.dcm").frames
    np.testing.assert_array_equal(multi[0], gray[0])
    rle = read_dicom(shared_data / "dicom" / "OBXXXX1A_rle.dcm").frames
    np.testing.assert_array_equal(rle, gray)  # RLE is lossless


def test_dicom_monochrome_12bit_scaling_and_fps(tmp_path: Path) -> None:
    arr = (np.arange(3 * 4 * 5).reshape(3, 4, 5) * 60).astype(np.uint16)
    _write_dicom(tmp_path / "m.dcm", arr, bits_stored=12, FrameTime=40)
    v = read_dicom(tmp_path / "m.dcm")
    np.testing.assert_array_equal(v.frames, np.rint(arr * (255 / 4095)).astype(np.uint8))
    assert v.fps == pytest.approx(25.0)
    _write_dicom(tmp_path / "inv.dcm", (arr[:1] // 16).astype(np.uint8), photometric="MONOCHROME1", CineRate=15)
    v = read_dicom(tmp_path / "inv.dcm")
    np.testing.assert_array_equal(v.frames, 255 - (arr[:1] // 16).astype(np.uint8))
    assert v.fps == 15.0


def test_dicom_16bit_cine_scaled_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deep monochrome cine is scaled a chunk of frames at a time (it was four float32 copies of the whole cine):
    the same values as the formula over the whole array, signed and unsigned."""
    from sonodistill.data import readers

    rng = np.random.default_rng(0)
    signed = rng.integers(-(2**15), 2**15, (7, 6, 5)).astype(np.int16)
    _write_dicom(tmp_path / "s.dcm", signed, bits_stored=16, PixelRepresentation=1)
    expected = np.clip(np.rint((signed.astype(np.float64) + 2**15) * (255 / 65535)), 0, 255).astype(np.uint8)
    monkeypatch.setattr(readers, "_FLOAT_CHUNK_VALUES", 6 * 5 * 2)  # chunks of 2 frames: 4 chunks for 7 frames
    np.testing.assert_array_equal(read_dicom(tmp_path / "s.dcm").frames, expected)
    monkeypatch.setattr(readers, "_FLOAT_CHUNK_VALUES", 16 * 1024**2)
    np.testing.assert_array_equal(read_dicom(tmp_path / "s.dcm").frames, expected)


def test_dicom_without_pixel_data_raises_without_phi(tmp_path: Path) -> None:
    path = tmp_path / "nopix.dcm"
    _write_dicom(path, None)
    with pytest.raises(DataError) as info:
        read_dicom(path)
    assert str(path) in str(info.value) and "no pixel data" in str(info.value)
    _assert_no_phi(str(info.value))


def test_dicom_truncated_pixels_raise_without_phi(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.dcm"
    _write_dicom(path, np.zeros((2, 16, 16), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError) as info:
        read_clip(path)
    assert str(path) in str(info.value)
    _assert_no_phi(str(info.value) + repr(info.value) + caplog.text)


def test_dicom_detected_by_preamble_without_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.bin"
    _write_dicom(path, np.full((1, 8, 8), 7, np.uint8))
    v = read_clip(path)
    assert v.frames.shape == (1, 8, 8) and int(v.frames[0, 0, 0]) == 7
    _assert_no_phi(repr(v))


# -- images and masks -----------------------------------------------------------------------------
def test_rgb_to_gray_bt601_hand_values() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [10, 20, 30]]], np.uint8)
    # 0.299*255=76.2, 0.587*255=149.7, 0.114*255=29.1, 255, 0.299*10+0.587*20+0.114*30=18.1
    np.testing.assert_array_equal(rgb_to_gray(rgb), [[76, 150, 29, 255, 18]])


def test_rgb_to_gray_in_chunks_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A colour cine is converted a chunk of frames at a time (it was three float copies of the whole cine): the
    same bytes as the formula over the whole array, for a cine and for one image (chunked by rows)."""
    from sonodistill.data import readers

    rng = np.random.default_rng(0)
    cine = rng.integers(0, 256, (9, 7, 5, 3), dtype=np.uint8)
    whole = np.clip(np.rint(cine.astype(np.float32) @ readers._LUMA), 0, 255).astype(np.uint8)
    monkeypatch.setattr(readers, "_FLOAT_CHUNK_VALUES", 30)  # a cine: one frame a chunk; an image: two rows
    np.testing.assert_array_equal(rgb_to_gray(cine), whole)
    np.testing.assert_array_equal(rgb_to_gray(cine[0]), whole[0])
    np.testing.assert_array_equal(rgb_to_gray(cine[:, ::2]), whole[:, ::2])  # a strided view


@pytest.mark.parametrize("ext", ["png", "bmp", "tif", "jpg"])
def test_read_image_formats(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), 4, 0), 4, 1)  # 24 x 32 blocks
    Image.fromarray(rgb).save(tmp_path / f"x.{ext}")
    tol = 12 if ext == "jpg" else 0
    colour = read_image(tmp_path / f"x.{ext}", grayscale=False)
    assert colour.shape == (24, 32, 3) and colour.dtype == np.uint8
    gray = read_image(tmp_path / f"x.{ext}")
    assert gray.shape == (24, 32)
    assert np.abs(gray.astype(int) - rgb_to_gray(rgb)).mean() <= tol
    clip = read_clip(tmp_path / f"x.{ext}")
    assert clip.frames.shape == (1, 24, 32) and clip.fps is None


def test_read_image_16bit_and_gray(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arr16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(arr16).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), (arr16 >> 8).astype(np.uint8))
    twelve = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60)  # 12-bit data (max 3780) in a 16-bit file
    Image.fromarray(twelve).save(tmp_path / "t.png")
    with caplog.at_level(logging.WARNING, logger="sonodistill.data.readers"):
        np.testing.assert_array_equal(read_image(tmp_path / "t.png"), (twelve >> 8).astype(np.uint8))
    assert "t.png: 16-bit image with values only up to 3780: reduced to its high byte (0..14 of 255)" in caplog.text
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(g).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png", grayscale=False), g)


@pytest.mark.parametrize("name", ["cine.tif", "anim.png"])
def test_multi_page_image_is_an_error_not_its_first_page(tmp_path: Path, name: str) -> None:
    """A multi-page TIFF (or animated PNG) is a cine: reading page 0 alone would drop the rest without a word."""
    pages = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200, 90)]
    pages[0].save(tmp_path / name, save_all=True, append_images=pages[1:])
    for read in (read_image, read_clip, read_mask):
        with pytest.raises(DataError, match=rf"{name}.*3 frames in one (TIFF|PNG) image.*mp4 or DICOM"):
            read(tmp_path / name)


def test_read_mask(tmp_path: Path) -> None:
    m = np.zeros((16, 16), np.uint8)
    m[4:10, 3:12] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    np.testing.assert_array_equal(out, m // 255)
    Image.fromarray(m // 255).save(tmp_path / "m01.png")  # 0/1 masks stay 0/1
    np.testing.assert_array_equal(read_mask(tmp_path / "m01.png"), m // 255)
    Image.fromarray(np.repeat(np.repeat(m[::4, ::4], 4, 0), 4, 1)).save(tmp_path / "m.jpg", quality=70)
    jm = read_mask(tmp_path / "m.jpg")  # JPEG ringing must not leak into the mask
    np.testing.assert_array_equal(jm, np.repeat(np.repeat(m[::4, ::4], 4, 0), 4, 1) // 255)


# -- bad files ------------------------------------------------------------------------------------
def test_truncated_lus_mp4(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "lus-blues" / "videos" / "patient_10_L1.mp4").read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        read_video(path)
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_truncated_faststart_mp4_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_video(tmp_path / "fs.mp4", rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8), "mpeg4", "yuv420p",
                 movflags="faststart")
    assert read_video(tmp_path / "fs.mp4").frames.shape[0] == 20
    data = (tmp_path / "fs.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # header intact, frames missing
    with pytest.raises(DataError, match="truncated"):
        read_video(tmp_path / "cut.mp4")


@pytest.mark.parametrize(
    "name,content,cause",
    [("empty.mp4", b"", "empty"), ("text.mp4", b"this is not a video\n" * 20, "cannot open"),
     ("empty.png", b"", "empty"), ("text.png", b"not an image" * 10, "not a readable image"),
     ("text.dcm", b"not dicom" * 40, "not a DICOM")],
)
def test_bad_files_raise_data_error(tmp_path: Path, name: str, content: bytes, cause: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=cause) as info:
        read_clip(path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError):
        probe_file(path)


def test_truncated_png(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_missing_file(tmp_path: Path) -> None:
    for reader in (read_clip, read_video, read_dicom, read_image, read_mask, probe_file):
        with pytest.raises(DataError, match="file not found") as info:
            reader(tmp_path / "nope.mp4")
        assert "nope.mp4" in str(info.value)


def test_video_repr_is_short() -> None:
    v = Video(np.zeros((100, 64, 64), np.uint8), 25.0, "x.mp4")
    assert repr(v) == "Video(frames=uint8[100, 64, 64], fps=25.0, source='x.mp4')"
    v = Video(np.zeros((1, 8, 8), np.uint8), None, "x.dcm", (0.25, 0.3))
    assert repr(v) == "Video(frames=uint8[1, 8, 8], fps=None, source='x.dcm', pixel_spacing_mm=(0.25, 0.3))"


# -- headers that declare more than the file holds (issue 16, item 1) ------------------------------
def test_huge_declared_frame_count_is_a_data_error_not_an_allocation(tmp_path: Path) -> None:
    from .hostile import HUGE_FRAMES, write_huge_frame_count_avi

    path = write_huge_frame_count_avi(tmp_path / "huge.avi")
    assert path.stat().st_size < 16_000 and av.open(str(path)).streams.video[0].frames == HUGE_FRAMES
    for read in (read_video, probe_file):
        with pytest.raises(DataError, match=f"decoded 3 of the {HUGE_FRAMES} frames") as info:
            read(path)
        assert info.value.path == str(path)


def test_decoded_size_limit_and_growing_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sonodistill.data import readers

    from .hostile import write_small_avi

    path = write_small_avi(tmp_path / "forty.avi", frames=40, size=16)
    whole = read_video(path).frames
    monkeypatch.setattr(readers, "_PREALLOC_BYTES", 16 * 16 * 5)  # a first buffer of 5 frames, then grown
    np.testing.assert_array_equal(read_video(path).frames, whole)
    monkeypatch.setattr(readers, "MAX_DECODED_BYTES", 16 * 16 * 20)
    with pytest.raises(DataError, match="more than 20 frames of 16x16: the decoded clip would exceed the limit"):
        read_video(path)
    monkeypatch.setattr(readers, "MAX_FRAME_PIXELS", 15 * 15)
    with pytest.raises(DataError, match="16x16 frames, above the limit"):
        read_video(path)


# -- DICOM pixel spacing ----------------------------------------------------------------------------
def _region(units: int, dx: float, dy: float, box: tuple[int, int, int, int], spatial: int = 1):
    from pydicom.dataset import Dataset

    r = Dataset()
    r.RegionSpatialFormat = spatial
    r.PhysicalUnitsXDirection, r.PhysicalUnitsYDirection = units, units
    r.PhysicalDeltaX, r.PhysicalDeltaY = dx, dy
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = box
    return r


def test_dicom_pixel_spacing_from_the_largest_2d_centimetre_region(tmp_path: Path) -> None:
    from pydicom.sequence import Sequence

    from sonodistill.data.readers import dicom_pixel_spacing_mm

    regions = Sequence([_region(3, 0.02, 0.03, (0, 0, 40, 30)),          # small 2D region, cm
                        _region(3, 0.025, 0.035, (0, 0, 100, 80)),       # the largest 2D region, cm: used
                        _region(4, 0.5, 0.5, (0, 0, 200, 200)),          # Doppler: seconds, not a distance
                        _region(3, 0.9, 0.9, (0, 0, 300, 300), spatial=3)])  # spectral region: not 2D tissue
    _write_dicom(tmp_path / "r.dcm", np.zeros((1, 8, 8), np.uint8), SequenceOfUltrasoundRegions=regions,
                 PixelSpacing=[0.7, 0.7])
    assert read_dicom(tmp_path / "r.dcm").pixel_spacing_mm == pytest.approx((0.35, 0.25))  # (rows, columns) in mm
    _write_dicom(tmp_path / "p.dcm", np.zeros((1, 8, 8), np.uint8), PixelSpacing=[0.3, 0.2])
    assert read_dicom(tmp_path / "p.dcm").pixel_spacing_mm == pytest.approx((0.3, 0.2))   # no regions: PixelSpacing
    _write_dicom(tmp_path / "n.dcm", np.zeros((1, 8, 8), np.uint8),
                 SequenceOfUltrasoundRegions=Sequence([_region(4, 0.5, 0.5, (0, 0, 8, 8))]))
    assert read_dicom(tmp_path / "n.dcm").pixel_spacing_mm is None                      # nothing says a distance
    from pydicom.dataset import Dataset

    bad = Dataset()
    bad.SequenceOfUltrasoundRegions = Sequence([_region(3, 0.0, 0.02, (0, 0, 8, 8))])  # a zero delta: unusable
    assert dicom_pixel_spacing_mm(bad) is None
    assert read_clip(tmp_path / "r.dcm").pixel_spacing_mm == pytest.approx((0.35, 0.25))


def test_real_obstetric_dicom_spacing(shared_data: Path) -> None:
    """The obstetric example's B-mode region: 0.0262 cm a pixel; its Doppler region (units 4) is not used. The
    scanner burnt a caliper measurement into the image ("Cist Mag 1.06 cm"): the two '+' marks, 9-10 pixels
    wide, found here by their bright pixels, lie 1.06 cm apart at that spacing."""
    from scipy import ndimage

    v = read_dicom(shared_data / "dicom" / "OBXXXX1A.dcm")
    assert v.pixel_spacing_mm == pytest.approx((0.26229, 0.26229), abs=1e-5)
    window = v.frames[0, 280:312, 445:510] > 200           # the caliper and its dotted line
    labels, n = ndimage.label(window, structure=np.ones((3, 3), bool))
    boxes = [b for b in ndimage.find_objects(labels) if b[0].stop - b[0].start >= 9]  # the two crosses, not the dots
    assert len(boxes) == 2
    centres = np.array([[(b[0].start + b[0].stop - 1) / 2, (b[1].start + b[1].stop - 1) / 2] for b in boxes])
    distance_mm = float(np.linalg.norm((centres[0] - centres[1]) * np.asarray(v.pixel_spacing_mm)))
    assert distance_mm == pytest.approx(10.6, abs=0.1)
    assert read_dicom(shared_data / "dicom" / "US1_UNCR.dcm").pixel_spacing_mm is None  # no regions, no spacing
    assert read_clip(shared_data / "lus-blues" / _lus_rows(shared_data).file.iloc[0]).pixel_spacing_mm is None


def _export_tree(shared_data: Path, root: Path) -> None:
    """A scanner export: DICOMs named without a DICOM suffix in series folders, its DICOMDIR index, a hidden
    folder, notes."""
    dcm = (shared_data / "dicom" / "US1_UNCR.dcm").read_bytes()
    (root / "S1").mkdir(parents=True)
    (root / "S2" / "deeper").mkdir(parents=True)
    (root / ".thumbs").mkdir()
    (root / "DICOMDIR").write_bytes(dcm)  # has a DICM preamble, but is an export's index
    (root / "S1" / "IM0002").write_bytes(dcm)
    (root / "S1" / "IM0001").write_bytes(dcm)
    (root / "S1" / "1.2.840.10008.5.1").write_bytes(dcm)  # named by its UID: a "suffix" of digits
    (root / "S2" / "deeper" / "clip.MP4").write_bytes(b"")  # suffixes are compared in lower case
    (root / ".thumbs" / "x.png").write_bytes(b"")
    (root / ".hidden.png").write_bytes(b"")
    (root / "notes.txt").write_text("no pixels here")
    (root / "README").write_text("no suffix, no DICOM preamble")
    (root / "top.png").write_bytes(b"")


def test_files_in_folder_lists_what_the_readers_take(shared_data: Path, tmp_path: Path) -> None:
    _export_tree(shared_data, tmp_path)
    assert files_in_folder(tmp_path) == [tmp_path / "top.png"]
    assert files_in_folder(tmp_path, recursive=True) == [
        tmp_path / "S1" / "1.2.840.10008.5.1", tmp_path / "S1" / "IM0001", tmp_path / "S1" / "IM0002",
        tmp_path / "S2" / "deeper" / "clip.MP4", tmp_path / "top.png"]
    assert not is_supported_file(tmp_path / "DICOMDIR") and is_supported_file(tmp_path / "S1" / "IM0001")


def test_files_in_folder_errors_name_the_folder(shared_data: Path, tmp_path: Path) -> None:
    _export_tree(shared_data, tmp_path / "export")
    (tmp_path / "export" / "top.png").unlink()
    with pytest.raises(DataError, match=r"export.*no supported files in it \(its sub-folders are read with "
                                        r"--recursive\)"):
        files_in_folder(tmp_path / "export")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty.*no supported files in it or its sub-folders"):
        files_in_folder(tmp_path / "empty", recursive=True)
    with pytest.raises(DataError, match="not a folder"):
        files_in_folder(tmp_path / "export" / "notes.txt")


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads its memory from /proc (Linux)")
def test_decoding_a_long_clip_peaks_near_its_own_size(tmp_path: Path) -> None:
    """Decoded frames go into blocks of 64 MiB joined once at the end: a 190 MiB clip peaked at 467 MiB when one
    buffer doubled by copying (about 9 GB for a 5-minute 800 x 600 clip), now at its size + one block + PyAV's own.
    Measured in a fresh process by benchmarks/long_clip_memory.py's own child (decode only, as `read_clip`)."""
    from tests.benchmark_scripts import benchmark_script

    path, n = tmp_path / "long.avi", 650
    with benchmark_script("long_clip_memory") as script:
        script.write_clip(path, n, 640, 480)  # uncompressed grey frames: fast to write and to read
        peak = script.measure(path, 0)
    assert peak.frames == n and not peak.torch_loaded
    assert peak.growth <= peak.clip_bytes + 128 * 1024**2, (peak.growth / 2**20, peak.clip_bytes / 2**20)

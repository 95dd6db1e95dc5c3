"""Video: validation, the reference's [-1, 1] -> uint8 mapping, and MP4 / GIF files read back."""
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from stdit_engine.engine.video import Video
from stdit_engine.errors import ConfigError


def gradient_video(frames=5, height=48, width=64, fps=8) -> Video:
    """A smooth RGB gradient that shifts a little per frame: easy for lossy codecs."""
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    rgb = torch.stack([x * 255 // (width - 1), y * 255 // (height - 1), (t * 40 + 30).clamp(max=255)], -1)
    return Video(rgb.to(torch.uint8), fps)


def read_back(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return stream, np.stack(frames)


def test_mp4_round_trip(tmp_path):
    video = gradient_video()
    written = video.save(tmp_path / "clip.mp4")
    assert written == tmp_path / "clip.mp4"
    stream, frames = read_back(written)
    assert stream.codec_context.name == "h264"
    assert (stream.width, stream.height) == (64, 48)
    assert stream.average_rate == Fraction(8)
    assert frames.shape == (5, 48, 64, 3)
    error = np.abs(frames.astype(np.int16) - video.frames.numpy().astype(np.int16)).mean()
    assert error < 8, f"mean abs error {error:.2f} of 255"


def test_gif_round_trip(tmp_path):
    video = gradient_video(frames=4)
    _, frames = read_back(video.save(tmp_path / "clip.gif"))
    assert frames.shape == (4, 48, 64, 3)
    error = np.abs(frames.astype(np.int16) - video.frames.numpy().astype(np.int16)).mean()
    assert error < 8, f"mean abs error {error:.2f} of 255"


def test_sizes():
    video = gradient_video(frames=3, height=16, width=32)
    assert (len(video), video.height, video.width) == (3, 16, 32)


def test_from_decoded_maps_like_the_reference():
    values = torch.tensor([-1.0, 1.0, 0.0, -3.0, 2.5, 0.5, -0.5])
    x = values.view(1, -1, 1, 1).expand(3, -1, 1, 1)  # [C=3, T=7, H=1, W=1]
    video = Video.from_decoded(x, fps=8)
    assert video.frames.shape == (7, 1, 1, 3)
    assert video.frames.dtype == torch.uint8
    # 0 -> 127.5 + 0.5 = 128; 0.5 -> 191.25 + 0.5 -> 191; -0.5 -> 63.75 + 0.5 -> 64
    assert video.frames[:, 0, 0, 0].tolist() == [0, 255, 128, 0, 255, 191, 64]


def test_from_decoded_low_precision_never_wraps():
    # In bf16, 255 + 0.5 rounds to 256, which would wrap to 0 without the clamp to 255.
    video = Video.from_decoded(torch.ones(3, 2, 2, 2, dtype=torch.bfloat16), fps=8)
    assert video.frames.unique().tolist() == [255]


def test_from_decoded_layout():
    x = torch.zeros(3, 2, 4, 6)
    x[0] = 1  # red channel full on
    frames = Video.from_decoded(x, fps=8).frames
    assert frames.shape == (2, 4, 6, 3)
    assert frames[..., 0].eq(255).all() and frames[..., 1:].eq(128).all()


@pytest.mark.parametrize("x, message", [
    (torch.zeros(4, 2, 8, 8), r"shape \[3, T, H, W\]"),
    (torch.zeros(3, 8, 8), r"shape \[3, T, H, W\]"),
    (torch.zeros(3, 2, 8, 8, dtype=torch.uint8), "float tensor"),
])
def test_from_decoded_rejects(x, message):
    with pytest.raises(ConfigError, match=message):
        Video.from_decoded(x, fps=8)


@pytest.mark.parametrize("frames, fps, message", [
    (torch.zeros(2, 8, 8, 3), 8, "uint8"),
    (torch.zeros(2, 8, 8, dtype=torch.uint8), 8, r"\[T, H, W, 3\]"),
    (torch.zeros(2, 8, 8, 4, dtype=torch.uint8), 8, r"\[T, H, W, 3\]"),
    (torch.zeros(0, 8, 8, 3, dtype=torch.uint8), 8, "empty"),
    (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), 0, "positive int"),
    (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), 7.5, "positive int"),
])
def test_validation(frames, fps, message):
    with pytest.raises(ConfigError, match=message):
        Video(frames, fps)


def test_odd_size_mp4_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="even height and width"):
        gradient_video(height=47).save(tmp_path / "odd.mp4")


def test_odd_size_gif_is_fine(tmp_path):
    _, frames = read_back(gradient_video(frames=2, height=47, width=63).save(tmp_path / "odd.gif"))
    assert frames.shape == (2, 47, 63, 3)


def test_unknown_extension_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"\.mp4, \.gif"):
        gradient_video().save(tmp_path / "clip.avi")


def test_missing_folder_is_rejected(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(ConfigError, match="does not exist: create it"):
        gradient_video().save(missing / "clip.mp4")
    assert not missing.exists()

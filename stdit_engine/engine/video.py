"""`Video`: the uint8 frames and frame rate of one generated clip, saved as MP4 (H.264) or GIF."""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import torch

from ..errors import ConfigError
from ..files import atomic_path, check_output_target
from ..models.frames import quantize_frames

_SUPPORTED = (".mp4", ".gif")
_CRF = 18  # x264 constant rate factor: visually near-lossless at a modest size


@dataclass
class Video:
    """`frames`: uint8 tensor [T, H, W, 3] (RGB) on the CPU; `fps`: frames per second."""

    frames: torch.Tensor
    fps: int

    def __post_init__(self) -> None:
        frames = self.frames
        if not isinstance(frames, torch.Tensor):
            raise ConfigError(f"Video frames must be a torch.Tensor, got {type(frames).__name__}")
        if frames.dtype != torch.uint8:
            raise ConfigError(f"Video frames must be uint8, got {frames.dtype}: "
                              "use Video.from_decoded() for a float tensor in [-1, 1]")
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ConfigError(f"Video frames must have shape [T, H, W, 3], got {list(frames.shape)}")
        if frames.numel() == 0:
            raise ConfigError(f"Video frames must not be empty, got shape {list(frames.shape)}")
        if frames.device.type != "cpu":
            raise ConfigError(f"Video frames must be on the CPU, got {frames.device}: call .cpu() first")
        if isinstance(self.fps, bool) or not isinstance(self.fps, int) or self.fps <= 0:
            raise ConfigError(f"Video fps must be a positive int, got {self.fps!r}")

    @classmethod
    def from_decoded(cls, x: torch.Tensor, fps: int) -> Video:
        """A video from VAE output [3, T, H, W] in [-1, 1], quantised as the reference saves it.

        The arithmetic runs in `x`'s own dtype and device, as the reference's `save_sample` does,
        so that a bf16/fp16 decode gives the reference's exact pixels; the final clamp to 255
        matters there, where x*255 + 0.5 can round up to 256.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ConfigError(f"from_decoded expects a float tensor, got "
                              f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.ndim != 4 or x.shape[0] != 3:
            raise ConfigError(f"from_decoded expects shape [3, T, H, W], got {list(x.shape)}")
        return cls(quantize_frames(x).cpu(), fps)

    def __len__(self) -> int:
        return self.frames.shape[0]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the video to `path` (.mp4: H.264, .gif) and return the path written. The file
        appears whole or not at all (written under a temporary name, then renamed)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in _SUPPORTED:
            raise ConfigError(f"cannot save a video as {path.name!r}: supported extensions are "
                              f"{', '.join(_SUPPORTED)}")
        check_output_target(path)
        with atomic_path(path) as partial:
            if suffix == ".mp4":
                self._save_mp4(partial)
            else:
                self._save_gif(partial)
        return path

    def _save_mp4(self, path: Path) -> None:
        if self.height % 2 or self.width % 2:
            raise ConfigError(f"H.264 (yuv420p) needs an even height and width, got {self.width}x{self.height}: "
                              "crop or pad the frames, or save as .gif")
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=self.fps, options={"crf": str(_CRF)})
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
            self._encode(container, stream, self._rgb_frames())

    def _save_gif(self, path: Path) -> None:
        # A per-frame adaptive palette (ffmpeg palettegen -> paletteuse) instead of the fixed
        # 3-3-2 "rgb8" one, which bands smooth gradients badly.
        graph = av.filter.Graph()
        source = graph.add_buffer(width=self.width, height=self.height, format="rgb24",
                                  time_base=Fraction(1, self.fps))
        split, sink = graph.add("split"), graph.add("buffersink")
        palette_gen = graph.add("palettegen", "stats_mode=single")
        palette_use = graph.add("paletteuse", "new=1")
        source.link_to(split)
        split.link_to(palette_use, 0, 0)
        split.link_to(palette_gen, 1, 0)
        palette_gen.link_to(palette_use, 0, 1)
        palette_use.link_to(sink)
        graph.configure()

        def paletted():
            for frame in self._rgb_frames():
                graph.push(frame)
                yield graph.pull()  # stats_mode=single: one palette, so one output, per input frame

        with av.open(str(path), "w") as container:
            stream = container.add_stream("gif", rate=self.fps)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "pal8"
            self._encode(container, stream, paletted())

    def _rgb_frames(self):
        time_base = Fraction(1, self.fps)
        for index, frame in enumerate(self.frames.contiguous().numpy()):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = index, time_base
            yield video_frame

    @staticmethod
    def _encode(container, stream, frames) -> None:
        for frame in frames:
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the encoder's delayed packets

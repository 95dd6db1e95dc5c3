"""Writing output files: the target checked before the work, and written so that it is whole or absent.

Every file the engine writes (videos, exports and their specs, benchmark records) goes first to a
hidden temporary name in the target's own folder and is renamed onto the target only once complete
(`os.replace`, atomic within one file system). An error or Ctrl-C part-way leaves no file at the
final name, and an older file there stays intact until the new one replaces it.
Torch-free, so that the command line can check its targets before importing anything heavy.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ConfigError


def check_output_target(path: str | os.PathLike, what: str = "output", example_name: str = "out.mp4") -> Path:
    """`path` as a Path if a file can be written there, else a ConfigError saying why.

    The folder is probed by creating (and removing) a file in it: permission bits do not tell
    (root ignores them; /proc and read-only mounts refuse anyway).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"the {what} {path} is an existing folder: pass a file name (e.g. {path / example_name})")
    folder = path.parent
    nearest = next((parent for parent in (folder, *folder.parents) if parent.exists()), None)
    if nearest is not None and not nearest.is_dir():
        raise ConfigError(f"the {what} {path} cannot be written: {nearest} is a file, not a folder")
    if not folder.is_dir():
        raise ConfigError(f"the {what} folder {folder} does not exist: create it first (mkdir -p {folder})")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write the {what} {path}: files cannot be created in {folder} "
                          f"({err.strerror or err}); choose a writable folder") from err
    return path


def _partial_name(path: Path) -> Path:
    # Hidden, unique per writer, and with the target's suffix: writers (PyAV, AOTInductor) pick
    # the format from it.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial{path.suffix}")


def remove_partials(folder: str | os.PathLike, suffix: str) -> None:
    """Removes the temporary files of `atomic_path` writes to `*suffix` targets in `folder` that a
    killed process left behind (a finished or failed write leaves none)."""
    for leftover in Path(folder).glob(f".*.partial{suffix}"):
        leftover.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; renames it onto `path` when the block
    completes, and removes it when the block raises (KeyboardInterrupt included)."""
    path = Path(path)
    partial = _partial_name(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder_outputs(path: str | os.PathLike) -> Iterator[Path]:
    """For writers that put several files beside `path` and name them after it (an ONNX model and
    its external `.data`, whose name is recorded inside the model; a spec `.json`): yields
    `path`'s name inside a temporary folder beside it; when the block completes, every file
    written there moves to `path`'s folder under its own name, `path` itself last."""
    path = Path(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        yield staging / path.name
        written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)
        for file in written:
            os.replace(file, path.parent / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` to `path` whole or not at all."""
    path = Path(path)
    with atomic_path(path) as partial:
        partial.write_text(text)
    return path

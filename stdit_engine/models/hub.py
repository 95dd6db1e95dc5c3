"""Where model folders and files come from: a local path, or the Hugging Face hub through its cache.

All hub access of the engine goes through this module, so that offline use (`HF_HUB_OFFLINE=1`, a
pre-filled `HF_HUB_CACHE`) behaves the same for every component and every failure reads alike.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, snapshot_download

from ..errors import CheckpointError

# "name" or "org/name" as the hub spells them. Anything else ("./x", "/x", "a/b/c", "~/x") can only be
# a local path, so a missing one is reported without asking the hub.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.fullmatch(text)) and "--" not in text and ".." not in text


def resolve_model_dir(
    path_or_id: str, *, what: str, files: Sequence[str] | None = None
) -> Path:
    """The folder of a model: `path_or_id` itself if it is a local folder, else a hub snapshot.

    `files`: glob patterns of the non-weight files to fetch from the hub (None: the whole repo). The
    weights are then fetched as `*.safetensors` when the repo has them, else as `*.bin`, so that a
    repo holding both formats is downloaded once, not twice.
    """
    _check_given(path_or_id, what=what)
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise CheckpointError(
            f"cannot load the {what}: {path_or_id!r} is a file, but a model folder is needed; "
            "pass the folder that holds it (config.json and the weights)"
        )
    _check_repo_id(path_or_id, what=what, kind="folder")
    if files is None:
        return _snapshot(path_or_id, what=what, patterns=None)
    folder = _snapshot(path_or_id, what=what, patterns=[*files, "*.safetensors", "*.safetensors.index.json"])
    if not any(folder.glob("*.safetensors")):  # a repo with pickled weights only
        folder = _snapshot(path_or_id, what=what, patterns=[*files, "*.bin", "*.bin.index.json"])
    return folder


def resolve_model_file(path_or_id: str, filename: str | None, *, what: str) -> Path:
    """One weights file: `path_or_id` if it is a local file, `path_or_id/filename` if it is a local
    folder, else `filename` of the hub repo `path_or_id` (through the hub cache)."""
    _check_given(path_or_id, what=what)
    local = Path(path_or_id).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        if filename is not None and (local / filename).is_file():
            return local / filename
        missing = f"has no file {filename!r}" if filename else "is a folder, and no file name was given"
        raise CheckpointError(
            f"cannot load the {what}: {path_or_id!r} {missing}; pass the path of the weights file itself"
        )
    _check_repo_id(path_or_id, what=what, kind="file")
    if filename is None:
        raise CheckpointError(
            f"cannot load the {what}: {path_or_id!r} is not a local file; to fetch it from the hub, "
            "also give the name of the file in that repo"
        )
    try:
        return Path(hf_hub_download(path_or_id, filename, **_hub_options()))
    except Exception as err:  # any hub failure (HTTP, network, cache, validation): see _hub_error
        raise _hub_error(f"file {filename!r} of hub repo {path_or_id!r}", path_or_id, what, err) from err


def _check_given(path_or_id: str, *, what: str) -> None:
    if not path_or_id:  # Path("") would be the working directory
        raise CheckpointError(f"no {what} was given: pass the path of a local copy or a hub repo id")


def _check_repo_id(path_or_id: str, *, what: str, kind: str) -> None:
    if not looks_like_repo_id(path_or_id):
        raise CheckpointError(
            f"cannot load the {what}: there is no local {kind} {path_or_id!r}, and it is not a hub repo "
            "id ('org/name') either; pass the path of an existing local copy, or a hub repo id"
        )


def _snapshot(repo_id: str, *, what: str, patterns: list[str] | None) -> Path:
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, **_hub_options()))
    except Exception as err:  # any hub failure (HTTP, network, cache, validation): see _hub_error
        raise _hub_error(f"hub repo {repo_id!r}", repo_id, what, err) from err


def _hub_options() -> dict:
    """The cache folder and offline flag, read from the environment at call time.

    huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, when it is imported (into
    `huggingface_hub.constants`); a process (or a test) that sets them later would otherwise be
    ignored. Unset variables leave the hub's own settings in force.
    """
    offline = constants.HF_HUB_OFFLINE or any(
        os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    cache = os.environ.get("HF_HUB_CACHE")
    return {"cache_dir": os.path.expanduser(cache) if cache else None, "local_files_only": offline}


def _hub_error(target: str, repo_id: str, what: str, err: Exception) -> CheckpointError:
    options = _hub_options()
    offline = "on" if options["local_files_only"] else "off"
    cache = options["cache_dir"] or constants.HF_HUB_CACHE
    return CheckpointError(
        f"cannot load the {what}: {repo_id!r} is not a local path, and fetching {target} failed "
        f"({type(err).__name__}: {err}). Fix: download it while online (`hf download {repo_id}`), "
        f"or pass the path of a local copy; with HF_HUB_OFFLINE set (now {offline}) the files must "
        f"already be in the hub cache ({cache}), and the repo id must be spelled as on the hub "
        "(gated repos also need `hf auth login`)."
    )

"""Tiny models saved in the released Hugging Face formats, and a fake hub cache to serve them offline.

Offline hub tests: lay the repo out with `make_hub_cache_repo(cache, repo_id, folder)`, then
`monkeypatch.setenv("HF_HUB_OFFLINE", "1")` and `monkeypatch.setenv("HF_HUB_CACHE", str(cache))`.
Setting the variables after huggingface_hub was imported is enough: stdit_engine.models.hub reads
them at call time (huggingface_hub itself reads them only at import).
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import sentencepiece as spm

from stdit_engine.configs import T5Config, VAEConfig
from stdit_engine.models.text_encoder import TextEncoder
from stdit_engine.models.vae import VideoVAE

_SPM_CORPUS = [
    "a sea turtle swimming over a coral reef",
    "a cat sitting on a red sofa in the afternoon sun",
    "an aerial drone shot of waves crashing on the rocks at sunset",
    "a busy city street at night with neon lights and rain",
    "a snowy mountain landscape under a clear blue sky, time lapse",
]


def make_tiny_t5_dir(
    path: Path, cfg: T5Config, *, model: TextEncoder | None = None, seed: int = 0, spiece: bool = False
) -> Path:
    """Save a T5 encoder (`model`, or random weights of `cfg`) with its tokenizer as a HF folder.

    The weights are sharded safetensors with an index, as in DeepFloyd/t5-v1_1-xxl. `spiece=True`
    replaces the tokenizer by a sentencepiece model (spiece.model + a T5Tokenizer config, the layout of
    that repo), trained here on a few sentences; the encoder's own tokenizer is then not saved.
    """
    path = Path(path)
    model = model or TextEncoder.from_random_weights(cfg, device="cpu", seed=seed)
    # The embedding (vocab x d_model) fills one shard, the layers another.
    model.model.save_pretrained(path, max_shard_size="4MB")
    if not spiece:
        model.tokenizer.save_pretrained(path)
        return path
    spm_model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SPM_CORPUS), model_writer=spm_model, model_type="unigram",
        vocab_size=120, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2,
    )
    (path / "spiece.model").write_bytes(spm_model.getvalue())
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (path / "special_tokens_map.json").write_text(json.dumps(specials))
    (path / "tokenizer_config.json").write_text(
        json.dumps({**specials, "tokenizer_class": "T5Tokenizer", "extra_ids": 100, "model_max_length": 512})
    )
    return path


def make_tiny_vae_dir(
    path: Path, cfg: VAEConfig, *, model: VideoVAE | None = None, seed: int = 0
) -> Path:
    """Save an AutoencoderKL (`model`, or random weights of `cfg`) as a diffusers folder
    (config.json + diffusion_pytorch_model.safetensors)."""
    path = Path(path)
    model = model or VideoVAE.from_random_weights(cfg, device="cpu", seed=seed)
    model.model.save_pretrained(path)
    return path


def make_hub_cache_repo(cache_dir: Path, repo_id: str, src_dir: Path) -> None:
    """Lay out the files of `src_dir` as hub repo `repo_id` in the hub cache `cache_dir`:
    models--org--name/refs/main (the commit) and snapshots/<commit>/<files> (plain copies: the blobs/
    folder and symlinks of a real cache are not needed to resolve files offline)."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # no newline: the hub reads the file verbatim
    shutil.copytree(src_dir, repo / "snapshots" / commit, dirs_exist_ok=True)

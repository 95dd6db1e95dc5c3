"""The T5 v1.1 encoder and its tokenizer (SPEC section 4): prompts -> caption embeddings and mask.

Prompts arrive already cleaned (models/caption.py); this module only tokenizes and encodes them.
A prompt's embedding depends on the prompt alone, never on the prompts it is batched with: the
encoder's blocks and final norm compute one prompt at a time (`compute_rows_apart`).
"""
from __future__ import annotations

import string
import threading
import warnings
from contextlib import contextmanager

import torch
import transformers
from torch import nn
from packaging.version import Version
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import AutoTokenizer, PreTrainedTokenizerFast, T5EncoderModel

from ..configs import T5Config
from ..errors import CheckpointError, ConfigError, PromptTruncatedWarning
from .unreadable import unreadable_reason
from .hub import resolve_model_dir
from .wrapped import WrappedModel

# transformers 4.56 renamed from_pretrained's `torch_dtype` to `dtype`; 5.x warns on the old name.
_DTYPE_KWARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"

# Non-weight files of a T5 repo: config, tokenizer_config, special_tokens_map, tokenizer.json and the
# sentencepiece model (DeepFloyd/t5-v1_1-xxl keeps them at its root, beside sharded weights).
_T5_FILES = ["*.json", "*.model"]

# Vocabulary of the offline tokenizer used with random weights: these words become single tokens,
# anything else splits into characters (or <unk>), as with a real T5 tokenizer on rare words.
_WORDS = """
a an the and or of in on at to from with by for over under into near through across around above
below behind between while is are it its this that his her their one two three many some small
large big tall little long short old young new bright dark light red orange yellow green blue
purple pink white black brown gray golden silver clear colorful beautiful slow fast slowly quickly
gently calm quiet busy sunny rainy snowy cloudy foggy misty warm cold wet dry soft high low deep
man woman person people child children boy girl family crowd dog dogs cat cats bird birds horse
fish turtle whale dolphin bear fox lion tiger deer butterfly bee robot car cars train boat ship
plane drone bicycle city street road bridge building buildings house tower window door room
kitchen table chair cup book light lights lamp fire smoke water sea ocean river lake waterfall
wave waves beach sand rock rocks mountain mountains hill forest tree trees flower flowers grass
leaves garden field farm desert island sky cloud clouds sun sunset sunrise moon star stars night
day morning evening winter summer spring autumn rain snow wind storm ice space planet earth
coral reef underwater landscape view scene shot close up aerial drone camera video footage style
cinematic realistic animation painting time lapse slow motion walking running swimming flying
sitting standing dancing playing eating looking moving falling floating shining glowing burning
flowing crashing rolling blowing waving smiling talking holding riding jumping
""".split()


class TextEncoder(WrappedModel):
    """A transformers `T5EncoderModel` and its tokenizer, padding every prompt to `max_length` tokens."""

    def __init__(self, model: T5EncoderModel, tokenizer, *, max_length: int = 120):
        super().__init__(model)
        self.tokenizer = tokenizer
        # A fast tokenizer applies each call's padding and truncation to its one Rust backend before
        # tokenizing: two threads calling it with different settings can get each other's (a prompt
        # padded to its own length instead of max_length). Every call goes through `_tokenize`.
        self._tokenizer_lock = threading.Lock()
        self.max_length = max_length
        for module in (*model.encoder.block, model.encoder.final_layer_norm):
            compute_rows_apart(module)

    @classmethod
    def from_pretrained(
        cls, path_or_id: str, *, device, dtype: torch.dtype = torch.float32, max_length: int = 120
    ) -> TextEncoder:
        """Load tokenizer + encoder from a local Hugging Face T5 folder or a hub repo id.

        Only the encoder is built: decoder weights in the folder, if any, are skipped. The weights are
        read on the host in `dtype` (T5-XXL: about 4.7 billion weights), then moved to `device`.
        """
        folder = resolve_model_dir(path_or_id, what="T5 text encoder", files=_T5_FILES)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = T5EncoderModel.from_pretrained(folder, **{_DTYPE_KWARG: dtype})
        except Exception as err:  # missing, damaged or unsafe files, a folder of another model: see unreadable_reason
            raise CheckpointError(
                f"cannot load the T5 text encoder from {folder}: {unreadable_reason(err)}. Expected a Hugging Face T5 folder "
                "(config.json, tokenizer files, model*.safetensors or pytorch_model*.bin), such as a "
                "download of DeepFloyd/t5-v1_1-xxl"
            ) from err
        return cls(model.to(device), tokenizer, max_length=max_length)

    @classmethod
    def from_random_weights(
        cls, cfg: T5Config, *, device, dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> TextEncoder:
        """The T5 v1.1 encoder architecture of `cfg` with random weights and an offline tokenizer.

        Parameters are created directly on `device` in `dtype`: T5-XXL in fp32 is too large to
        initialise on the host and then move.
        """
        with random_init(device, dtype, seed):
            model = cls.build_model(cfg)
        if dtype == torch.float16:
            # As from_pretrained does in fp16: T5 v1.1 overflows unless its FFN output layers stay fp32.
            for name, module in model.named_modules():
                if name.rpartition(".")[2] in model._keep_in_fp32_modules:
                    module.float()
        return cls(model, _offline_tokenizer(cfg), max_length=cfg.max_length)

    @staticmethod
    def build_model(cfg: T5Config) -> T5EncoderModel:
        """The T5 v1.1 encoder architecture of `cfg`, on the current default device and dtype."""
        config = transformers.T5Config(
            vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
            num_layers=cfg.num_layers, num_heads=cfg.num_heads, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
        return T5EncoderModel(config)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption embeddings `[n, 1, max_length, d_model]` (in the encoder's dtype, inference tensors)
        and the attention mask `[n, max_length]` int64 (1 for the tokens up to the end token, a prefix)."""
        if isinstance(prompts, str) or not prompts:
            raise ConfigError("TextEncoder.encode() takes a non-empty list of prompts, not a single string")
        tokens = self._tokenize(list(prompts), max_length=self.max_length, padding="max_length", truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device, torch.int64)
        with torch.inference_mode():
            y = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return y[:, None], mask

    def _tokenize(self, prompts: list[str], **settings):
        with self._tokenizer_lock:
            return self.tokenizer(prompts, **settings)

    def warn_if_truncated(self, prompts: list[str], stacklevel: int = 1) -> None:
        """One PromptTruncatedWarning for all the prompts that `encode` will cut to `max_length`
        tokens (the end token included), as the reference does; none when every prompt fits.
        `stacklevel` as warnings.warn's, counted from this method's caller."""
        lengths = [len(ids) for ids in self._tokenize(list(prompts), add_special_tokens=True, verbose=False)["input_ids"]]
        long = [(i, n) for i, n in enumerate(lengths) if n > self.max_length]
        if not long:
            return
        shown = ", ".join(f"#{i} ({n} tokens)" for i, n in long[:5]) + (" ..." if len(long) > 5 else "")
        warnings.warn(
            f"{len(long)} of {len(prompts)} prompt(s) are longer than the text encoder's {self.max_length} tokens "
            f"and are truncated to their first {self.max_length}, as the reference does: {shown}. "
            "Shorten them to keep every word", PromptTruncatedWarning, stacklevel=stacklevel + 1)


def compute_rows_apart(module: nn.Module) -> None:
    """Makes `module` compute each sample of a batch on its own, so that a sample's output is the
    same bits whatever it is batched with: GPU kernels choose their tiling and reduction order by
    shape, so a batch of two can round differently from a batch of one. Weights are read once a
    call all the same (what streaming a block through the GPU pays for).

    The arguments split are the tensors of two or more dimensions whose first is the batch (that of
    the first argument, or of `hidden_states`); the others (flags, 1-D positions) go to every sample's call. The outputs
    are joined back along the first dimension, position by position in a tuple, and contiguous for
    every batch, a batch of one included: kernels choose by memory layout as well as by shape, and
    a block can return a strided view (T5's first block returns its position bias permuted), which a
    batch of one would otherwise hand on as it is and a join would not.
    """
    if getattr(module, "computes_rows_apart", False):
        return
    forward = module.forward

    def forward_rows(*args, **kwargs):
        batch = (args[0] if args else kwargs["hidden_states"]).shape[0]

        def row(value, index: int):
            splits = isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == batch
            return value[index:index + 1] if splits else value

        outputs = [forward(*(row(a, i) for a in args), **{k: row(v, i) for k, v in kwargs.items()})
                   for i in range(batch)]
        return _join_rows(outputs)

    module.forward = forward_rows
    module.computes_rows_apart = True


def _join_rows(outputs: list):
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return (first if len(outputs) == 1 else torch.cat(outputs)).contiguous()
    if isinstance(first, tuple):
        return tuple(_join_rows([output[i] for output in outputs]) for i in range(len(first)))
    return first  # None, or a value that does not depend on the sample


@contextmanager
def random_init(device, dtype: torch.dtype, seed: int):
    """Modules built inside get their parameters directly on `device` in `dtype`, drawn from `seed`;
    the caller's default dtype and (CPU and `device`) RNG states are restored afterwards."""
    device = torch.device(device)
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def _offline_tokenizer(cfg: T5Config) -> PreTrainedTokenizerFast:
    """A T5-compatible unigram tokenizer built without any download: <pad> 0, </s> 1, <unk> 2, the
    end token appended to every sequence, words split at white space with the "▁" prefix of
    sentencepiece. Deterministic, and built in milliseconds."""
    chars = string.ascii_letters + string.digits + string.punctuation
    scores: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -8.0}
    # Unigram picks the split with the highest total score: a known word (-5) beats its characters.
    for word in _WORDS:
        scores.setdefault(f"▁{word}", -5.0)
    for char in chars:
        scores.setdefault(f"▁{char}", -10.0)
        scores.setdefault(char, -10.0)
    if len(scores) > cfg.vocab_size:
        raise ConfigError(
            f"T5Config.vocab_size={cfg.vocab_size} is too small for the offline tokenizer "
            f"({len(scores)} tokens); use at least {len(scores)}"
        )
    tokenizer = Tokenizer(Unigram(list(scores.items()), unk_id=2))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=cfg.max_length,
    )

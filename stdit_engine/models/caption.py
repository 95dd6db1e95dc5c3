"""The DeepFloyd-IF / PixArt-alpha caption cleaner that Open-Sora v1.0 applies before T5.

T5 was trained on captions cleaned this way, so prompts must go through the same steps, in the
same order, with the same quirks: `clean_prompt` is the reference `text_preprocessing(text,
use_text_preprocessing=True)`, i.e. two passes of `clean_caption` (the second pass catches what
the first one uncovers, e.g. a "#123" that only becomes a word after punctuation is removed).
"""
from __future__ import annotations

import html
import re
import warnings
from urllib.parse import unquote_plus

import ftfy
from bs4 import BeautifulSoup

from ..errors import ConfigError, PromptErasedWarning

# What the cleaner removes that a whole prompt may be, for the messages that say so.
REMOVED_TEXT = "URLs, HTML tags, @handles, CJK characters, file names and bare numbers are among what is removed"

# URLs: "http(s):..." (or "www:...") or any "name.com/.co/.ru/.net/.org/.edu/.gov/.it" with its path.
_TLD = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)"
_URLS = (
    re.compile(r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|" + _TLD + r"))"),
    re.compile(r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|" + _TLD + r"))"),
)
_HANDLE = re.compile(r"@[\w\d]+\b")

# CJK strokes, katakana extensions, enclosed letters, compatibility, ideographs (ext. A), Yijing
# hexagrams, unified ideographs: one class for what the reference removes in seven passes.
_CJK = re.compile(r"[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff"
                  r"\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+")

# Steps between the HTML pass and the dash/underscore rule, in the reference's order:
# (pattern, replacement).
_MIDDLE_STEPS = [
    # every kind of dash (hyphen, en/em dash, minus-like forms, ...) -> "-"
    (re.compile(r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40"
                r"\u301C\u3030\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D]+"), "-"),
    # quotes to plain ASCII ones
    (re.compile(r"[`´«»“”¨]"), '"'),
    (re.compile(r"[‘’]"), "'"),
    # leftover entities (the HTML pass has already decoded the well-formed ones)
    (re.compile(r"&quot;?"), ""),
    (re.compile(r"&amp"), ""),
    (re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"), " "),  # IP addresses
    (re.compile(r"\d:\d\d\s+$"), ""),                          # article ids at the end
    (re.compile(r"\\n"), " "),                                 # a literal backslash-n
    (re.compile(r"#\d{1,3}\b"), ""),                           # "#123"
    (re.compile(r"#\d{5,}\b"), ""),                            # "#12345..."
    (re.compile(r"\b\d{6,}\b"), ""),                           # long numbers
    (re.compile(r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"), ""),  # file names
    (re.compile(r"[\"\']{2,}"), '"'),                          # runs of quotes -> one
    (re.compile(r"[\.]{2,}"), " "),                            # ellipses
    (re.compile(r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\\/\*]{1,}"), " "),  # stray symbols
    (re.compile(r"\s+\.\s+"), " "),                            # a lone " . "
]

# "this-is-my-cute-cat" / "this_is_my_cute_cat": more than 3 of these and they become spaces.
_WORD_JOINERS = re.compile(r"(?:\-|\_)")

# Steps after the second ftfy/unescape pass, in the reference's order.
_LATE_STEPS = [
    (re.compile(r"\b[a-zA-Z]{1,3}\d{3,15}\b"), ""),            # model numbers: jc6640
    (re.compile(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b"), ""),            # jc6640vc
    (re.compile(r"\b\d+[a-zA-Z]+\d+\b"), ""),                  # 6640vc231
    # shop and download boilerplate
    (re.compile(r"(worldwide\s+)?(free\s+)?shipping"), ""),
    (re.compile(r"(free\s)?download(\sfree)?"), ""),
    (re.compile(r"\bclick\b\s(?:for|on)\s\w+"), ""),
    (re.compile(r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?"), ""),
    (re.compile(r"\bpage\s+\d+\b"), ""),
    (re.compile(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b"), " "),  # ids: j2d1a2a...
    (re.compile(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b"), ""),          # sizes: 1920x1080 (latin/cyrillic x, ×)
    (re.compile(r"\b\s+\:\s+"), ": "),
    (re.compile(r"(\D[,\./])\b"), r"\1 "),                     # "twilight.As" -> "twilight. As"
    (re.compile(r"\s+"), " "),
]

# Final trims. The reference applies them to the string *before* its last strip(), so a caption
# still ending in a space here keeps its surrounding quotes: keep that order to match it.
_FINAL_STEPS = [
    (re.compile(r"^[\"\']([\w\W]+)[\"\']$"), r"\1"),           # one pair of enclosing quotes
    (re.compile(r"^[\'\_,\-\:;]"), ""),                        # one leading punctuation mark
    (re.compile(r"[\'\_,\-\:\-\+]$"), ""),                     # one trailing punctuation mark
    (re.compile(r"^\.\S+$"), ""),                              # a lone ".word"
]


def _apply(steps: list[tuple[re.Pattern[str], str]], text: str) -> str:
    for pattern, replacement in steps:
        text = pattern.sub(replacement, text)
    return text


def _basic_clean(text: str) -> str:
    # Mojibake and HTML entities, unescaped twice for doubly escaped text ("&amp;amp;").
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def clean_caption(text: str) -> str:
    """One pass of the reference `clean_caption`: lower-cased, URLs, HTML, handles, CJK, ids removed."""
    if not isinstance(text, str):
        raise ConfigError(f"a caption must be a str, got {type(text).__name__}: pass the prompt text")
    text = unquote_plus(text).strip().lower()
    text = text.replace("<person>", "person")
    for pattern in _URLS:
        text = pattern.sub("", text)
    text = BeautifulSoup(text, features="html.parser").text
    text = _HANDLE.sub("", text)
    text = _CJK.sub("", text)
    text = _apply(_MIDDLE_STEPS, text)
    if len(_WORD_JOINERS.findall(text)) > 3:
        text = _WORD_JOINERS.sub(" ", text)
    text = _basic_clean(text)
    text = _apply(_LATE_STEPS, text)
    return _apply(_FINAL_STEPS, text).strip()


def clean_prompt(text: str) -> str:
    """The text the reference feeds to the T5 tokenizer: `clean_caption` applied twice."""
    return clean_caption(clean_caption(text))


def warn_if_erased(prompts: list[str], cleaned: list[str], stacklevel: int = 1) -> None:
    """One PromptErasedWarning for the prompts with no words left once cleaned (`cleaned`, in the
    order of `prompts`); none when every prompt kept some. `stacklevel` as warnings.warn's, counted
    from this function's caller."""
    erased = [i for i, text in enumerate(cleaned) if not text]
    if not erased:
        return
    shown = ", ".join(f"#{i} {prompts[i][:40]!r}" for i in erased[:5]) + (" ..." if len(erased) > 5 else "")
    warnings.warn(
        f"{len(erased)} of {len(prompts)} prompt(s) have no words left once cleaned as T5's captions were "
        f"({REMOVED_TEXT}), so their videos follow no text, as the reference's would: {shown}",
        PromptErasedWarning, stacklevel=stacklevel + 1)

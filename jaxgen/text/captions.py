"""Prompt cleaning shared by the T5-conditioned pipelines (DeepFloyd IF, PixArt-α).

`text_preprocessing` and `clean_caption` reproduce diffusers' `IFPipeline._text_preprocessing` and
`IFPipeline._clean_caption` (PixArtAlphaPipeline carries copies of both): the same prompt gives the
same string, so the same tokens. Cleaning needs beautifulsoup4 and ftfy, which are imported only
when a caption is cleaned; without them `text_preprocessing` warns (`warnings.warn`, UserWarning)
and falls back to lower-casing, as diffusers does (it logs instead).
"""

from __future__ import annotations

import html
import importlib.util
import re
import urllib.parse
import warnings
from typing import Sequence

# Packages that caption cleaning needs: import name -> name on PyPI.
_CLEANING_PACKAGES = {"bs4": "beautifulsoup4", "ftfy": "ftfy"}

_FILE_EXTENSIONS = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"

# Runs of these are replaced by one space: ***AUSVERKAUFT***, #AUSVERKAUFT, a/b, (c), {d}, [e], f|g.
_BAD_PUNCT = r"[#®•©™&@·º½¾¿¡§~)(\]\[}{|\\/*]+"


def _sub(pattern: str, replacement: str) -> tuple[re.Pattern, str]:
    return re.compile(pattern), replacement


# Before the HTML is parsed: links would otherwise leave fragments of text behind.
_BEFORE_HTML = (
    _sub(r"<person>", "person"),
    # Links: http(s) addresses and bare domains.
    _sub(
        r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)))",
        "",
    ),
    _sub(
        r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)))",
        "",
    ),
)

# Between the HTML parse and the decision on hyphens/underscores.
_AFTER_HTML = (
    _sub(r"@[\w\d]+\b", ""),  # @nickname
    # CJK strokes (U+31C0) through CJK unified ideographs (U+9FFF): diffusers deletes seven
    # adjacent blocks one after the other, which deletes exactly their union.
    _sub(r"[\u31c0-\u9fff]+", ""),
    # Every kind of dash -> "-".
    _sub(
        r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0"
        r"\uFE31\uFE32\uFE58\uFE63\uFF0D]+",
        "-",
    ),
    # Quotes to one standard.
    _sub(r"[`´«»“”¨]", '"'),
    _sub(r"[‘’]", "'"),
    _sub(r"&quot;?", ""),
    _sub(r"&amp", ""),
    _sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IP addresses
    _sub(r"\d:\d\d\s+$", ""),  # article ids
    _sub(r"\\n", " "),  # a literal backslash-n
    _sub(r"#\d{1,3}\b", ""),  # "#123"
    _sub(r"#\d{5,}\b", ""),  # "#12345.."
    _sub(r"\b\d{6,}\b", ""),  # "123456.."
    _sub(rf"[\S]+\.(?:{_FILE_EXTENSIONS})", ""),  # file names
    _sub(r"[\"\']{2,}", '"'),  # """AUSVERKAUFT"""
    _sub(r"[\.]{2,}", " "),
    _sub(_BAD_PUNCT, " "),
    _sub(r"\s+\.\s+", " "),  # " . "
)

# this-is-my-cute-cat / this_is_my_cute_cat: more than three separators become spaces.
_SEPARATOR = re.compile(r"(?:\-|\_)")

# After ftfy and HTML entity decoding.
_AFTER_FTFY = (
    _sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # jc6640
    _sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),  # jc6640vc
    _sub(r"\b\d+[a-zA-Z]+\d+\b", ""),  # 6640vc231
    _sub(r"(worldwide\s+)?(free\s+)?shipping", ""),
    _sub(r"(free\s)?download(\sfree)?", ""),
    _sub(r"\bclick\b\s(?:for|on)\s\w+", ""),
    _sub(rf"\b(?:{_FILE_EXTENSIONS})(\simage[s]?)?", ""),
    _sub(r"\bpage\s+\d+\b", ""),
    _sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # j2d1a2a...
    _sub(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # sizes: 1920x1080 (latin x, cyrillic х, ×)
    _sub(r"\b\s+\:\s+", ": "),
    _sub(r"(\D[,\./])\b", r"\1 "),
    _sub(r"\s+", " "),
    # diffusers does not strip here (its `caption.strip()` result is discarded), so a leading
    # or trailing space keeps the next four patterns from matching; kept for parity.
    _sub(r"^[\"\']([\w\W]+)[\"\']$", r"\1"),
    _sub(r"^[\'\_,\-\:;]", ""),
    _sub(r"[\'\_,\-\:\-\+]$", ""),
    _sub(r"^\.\S+$", ""),
)


def _apply(steps: Sequence[tuple[re.Pattern, str]], text: str) -> str:
    for pattern, replacement in steps:
        text = pattern.sub(replacement, text)
    return text


def clean_caption(caption: str) -> str:
    """One pass of diffusers' `IFPipeline._clean_caption`: lower-cases and strips links, HTML,
    @mentions, CJK ideographs, file names, shop boilerplate and stray punctuation.

    Needs beautifulsoup4 and ftfy (ImportError without them). `text_preprocessing` applies it twice.
    """
    from bs4 import BeautifulSoup
    import ftfy

    caption = urllib.parse.unquote_plus(str(caption))
    caption = caption.strip().lower()
    caption = _apply(_BEFORE_HTML, caption)
    caption = BeautifulSoup(caption, features="html.parser").text
    caption = _apply(_AFTER_HTML, caption)
    if len(_SEPARATOR.findall(caption)) > 3:
        caption = _SEPARATOR.sub(" ", caption)
    caption = ftfy.fix_text(caption)
    caption = html.unescape(html.unescape(caption))
    caption = _apply(_AFTER_FTFY, caption)
    return caption.strip()


# `text_preprocessing`'s argument `clean_caption` shadows the function inside it.
_clean_once = clean_caption


def _is_available(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def text_preprocessing(text: str | Sequence[str], clean_caption: bool = False) -> list[str]:
    """A prompt or list of prompts -> list of prompts ready for the tokenizer.

    With `clean_caption`, each prompt goes through `clean_caption` twice (as diffusers does);
    otherwise it is lower-cased and stripped. If beautifulsoup4 or ftfy is missing, cleaning is
    skipped with a UserWarning that names the package.
    """
    if clean_caption:
        for module, package in _CLEANING_PACKAGES.items():
            if not _is_available(module):
                warnings.warn(
                    f"Setting `clean_caption=True` requires the {package} library, which is not installed "
                    f"(`pip install {package}`). Setting `clean_caption` to False.",
                    UserWarning,
                    stacklevel=2,
                )
                clean_caption = False
                break
    if not isinstance(text, (tuple, list)):
        text = [text]
    if clean_caption:
        return [_clean_once(_clean_once(t)) for t in text]
    return [t.lower().strip() for t in text]

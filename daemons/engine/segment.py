"""Sentence segmentation for long input: one request, synthesized segment by segment.

Splits after sentence-final punctuation (Latin/Cyrillic `. ! ? …` followed by a space; CJK `。！？；…`
with or without one), not after common abbreviations, initials or inside numbers; paragraphs (blank
lines) always end a segment; a segment longer than `max_chars` is cut at the last clause mark (`, ; :`
and their CJK forms), else at the last space, else hard; fragments shorter than `min_chars` are joined to
their neighbour (CJK characters count twice there)."""
from __future__ import annotations

import re

ABBREVIATIONS = {
    # English
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "fig", "approx",
    "dept", "est", "inc", "ltd", "co", "corp", "mt", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "a.m", "p.m", "u.s", "u.k", "ph.d",
    # French / German / Spanish / Italian / Portuguese
    "mme", "mlle", "bzw", "z.b", "usw", "sra", "sr", "dra", "sig", "ecc",
    # Russian
    "т.е", "т.д", "т.п", "т.к", "г", "гг", "ул", "им", "др", "стр", "см", "напр", "т", "д",
}

_LATIN_END = re.compile(r"([.!?…]+[\"'”»)\]]*)(\s+)")
_CJK_END = re.compile(r"([。！？；…]+[”」』）]*)")
_CLAUSE = re.compile(r"[,;:，、；：]")
_CJK = r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]"


def _is_abbreviation(before: str) -> bool:
    """`before` ends with the word that precedes a '.'."""
    m = re.search(r"([\w.]+)\.$", before)
    if not m:
        return False
    word = m.group(1).lower()
    if len(word) == 1 and word.isalpha():  # an initial: "J. K. Rowling"
        return True
    return word in ABBREVIATIONS


def _sentences(paragraph: str) -> list[str]:
    out, start = [], 0
    text = _CJK_END.sub(lambda m: m.group(1) + "\x00", paragraph)  # CJK ends need no following space
    for m in _LATIN_END.finditer(text):
        end = m.end(1)
        if m.group(1).startswith(".") and len(m.group(1)) == 1 and _is_abbreviation(text[start:end]):
            continue
        out.append(text[start:end])
        start = m.end()
    out.append(text[start:])
    pieces = []
    for s in out:
        pieces += s.split("\x00")
    return [p.strip() for p in pieces if p.strip()]


def _cut_long(s: str, max_chars: int) -> list[str]:
    parts = []
    while len(s) > max_chars:
        window = s[:max_chars]
        cut = max((m.end() for m in _CLAUSE.finditer(window)), default=0)
        if cut < max_chars // 3:
            sp = window.rfind(" ")
            cut = sp + 1 if sp > max_chars // 3 else max_chars
        parts.append(s[:cut].strip())
        s = s[cut:].strip()
    if s:
        parts.append(s)
    return [p for p in parts if p]


def _weight(s: str) -> int:
    """Length for the short-fragment rule: a CJK character carries about a word, so it counts twice."""
    return len(s) + len(re.findall(_CJK, s))


def split_text(text: str, max_chars: int = 300, min_chars: int = 8) -> list[str]:
    segments: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split()) if not re.search(_CJK, para) else re.sub(r"\s*\n\s*", "", para)
        if not para:
            continue
        merged: list[str] = []
        for sent in _sentences(para):
            for piece in _cut_long(sent, max_chars):
                if merged and (_weight(merged[-1]) < min_chars or _weight(piece) < min_chars) \
                        and len(merged[-1]) + len(piece) + 1 <= max_chars:
                    sep = "" if re.search(_CJK + "$", merged[-1]) else " "
                    merged[-1] = merged[-1] + sep + piece
                else:
                    merged.append(piece)
        segments += merged
    return segments


class Segment:
    """One segment of a request: its text, frame cap and prompt rows. A lazy segment builds its prompt
    when it is first needed (`build`) and `release()` drops it again, so a long request holds the rows of
    one sentence at a time, not of all of them."""

    def __init__(self, text: str, prompt, cap: int, build=None):
        self.text, self._prompt, self.cap, self._build = text, prompt, cap, build

    @property
    def prompt(self):
        if self._prompt is None:
            self._prompt = self._build()
        return self._prompt

    def release(self) -> None:
        if self._build is not None:
            self._prompt = None


def plan_segments(prompts, text: str, language: str, *, max_frames: int, non_streaming: bool = False,
                  xvector=None, ref_codes=None, ref_text: str | None = None, max_chars: int = 300,
                  cap_base: int = 25, cap_per_token: float = 6.0, lazy: bool = False) -> list[Segment]:
    """Split the text and plan every segment up front, so bad input fails before any audio is made.
    Each segment's cap derives from its token count (`generate.frame_cap`), never above `max_frames`.
    An in-context voice (`ref_codes` + `ref_text`) goes into every segment's prompt. `lazy`: only the
    first prompt is built now (it checks the language and the voice); the others are tokenized only
    (their caps, and that they have tokens) and built when their segment starts."""
    from .errors import InvalidText
    from .generate import frame_cap

    text = prompts.check_text(text)
    parts = split_text(text, max_chars=max_chars)
    if not parts:
        raise InvalidText("text is empty")

    def cap(n_tokens: int) -> int:
        return max(1, min(max_frames, frame_cap(n_tokens, cap_base, cap_per_token)))

    def builder(part):
        return lambda: prompts.build(part, language, non_streaming=non_streaming, xvector=xvector,
                                     ref_codes=ref_codes, ref_text=ref_text)

    segs = []
    for i, part in enumerate(parts):
        if lazy and i > 0:
            n = prompts.count_text_tokens(part)
            if n == 0:
                raise InvalidText("text produced no tokens")
            segs.append(Segment(part, None, cap(n), build=builder(part)))
        else:
            p = builder(part)()
            segs.append(Segment(part, p, cap(p.n_text_tokens), build=builder(part) if lazy else None))
    return segs

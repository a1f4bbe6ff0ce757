"""Talker input rows for every Base-model prompt mode (../shared/MODEL.md section 2).

Each prompt row is text-side embedding + codec-side embedding. The text side comes from the
precomputed `text_projection(text_embedding)` table, the codec side from the talker's codec table,
the code predictor's tables (reference frames) or the x-vector."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from .errors import InvalidRequest, InvalidText, UnknownLanguage
from .manifest import ModelDir

MAX_TEXT_CHARS = 20000
_TURN = "<|im_start|>"


@dataclass
class Prompt:
    prefill: np.ndarray   # [P, hidden] rows of the prompt
    trailing: np.ndarray  # [R, hidden] text rows added to the first R generated frames
    pad: np.ndarray       # [hidden] tts_pad row added after the trailing text is used up
    n_text_tokens: int
    n_fixed: int = 0      # leading prefill rows that do not depend on the text (cacheable per voice)

    def text_row(self, step: int) -> np.ndarray:
        return self.trailing[step] if step < len(self.trailing) else self.pad


def frame_embeddings(codec_table: np.ndarray, pred_tables: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """F(frame) = C(c0) + sum_k E_k(c_k), accumulated in codebook order like the official sum.
    frames: [n, 16] -> [n, hidden]."""
    frames = np.asarray(frames)
    acc = codec_table[frames[:, 0]].astype(np.float32, copy=True)
    for k in range(1, frames.shape[1]):
        acc += pred_tables[k - 1][frames[:, k]]
    return acc


class PromptBuilder:
    def __init__(self, md: ModelDir):
        self.md = md
        path = str(md.file(md.manifest["text"]["tokenizer"]))
        self.tok = Tokenizer.from_file(path)
        # User text is text: in this one the special tokens' strings (<|im_end|>, <tts_pad>, ...) are plain
        # characters, so no input can end the turn or reshape the prompt (the official wrapper tokenises them
        # as control tokens). A separate instance: the flag is per tokenizer object.
        self.plain = Tokenizer.from_file(path)
        self.plain.encode_special_tokens = True
        self.sp = md.special
        self.hidden = md.talker["hidden_size"]
        self.text_vocab = md.manifest["text"]["vocab_size"]
        self.codec = md.codec_embedding
        self.pred_tables = md.predictor_embeddings
        self._pad, self._bos, self._eos = (self.T([self.sp[k]])[0] for k in ("tts_pad", "tts_bos", "tts_eos"))

    # --- building blocks ---------------------------------------------------------------------
    def T(self, ids) -> np.ndarray:
        return np.asarray(self.md.text_table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def C(self, ids) -> np.ndarray:
        return self.codec[np.asarray(ids, dtype=np.int64)]

    def language_id(self, language: str | None) -> int | None:
        lang = (language or "auto").strip().lower()
        if lang == "auto":
            return None
        if lang not in self.md.languages:
            raise UnknownLanguage(f"unknown language {language!r}; supported: auto, "
                                  + ", ".join(sorted(self.md.languages)))
        return self.md.languages[lang]

    def encode(self, text: str, template: str) -> list[int]:
        """The ids of `template.format(text)` with the user text read as plain characters. The tokenizer
        encodes the pieces between special tokens independently, so encoding <|im_start|> | the plain
        piece "assistant\n" + text | the tail separately gives the official ids for every text that holds
        no special token's string (tests/test_prompt_text.py checks it)."""
        head, tail = template.split("{}")
        assert head.startswith(_TURN) and _TURN not in head[len(_TURN):] and tail.startswith("<|im_end|>")
        return (self.tok.encode(_TURN, add_special_tokens=False).ids
                + self.plain.encode(head[len(_TURN):] + text, add_special_tokens=False).ids
                + self.tok.encode(tail, add_special_tokens=False).ids)

    def text_ids(self, text: str) -> list[int]:
        """The target text's token ids, as `build` slices them out of the chat template."""
        return self.encode(text, "<|im_start|>assistant\n{}<|im_end|>\n<|im_start|>assistant\n")[3:-5]

    def count_text_tokens(self, text: str) -> int:
        return len(self.text_ids(self.check_text(text)))

    @staticmethod
    def check_text(text, what: str = "text") -> str:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidText(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if not isinstance(text, str):
            raise InvalidText(f"{what} must be a string")
        text = unicodedata.normalize("NFC", text)
        if not text.strip():
            raise InvalidText(f"{what} is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidText(f"{what} is too long: {len(text)} characters (limit {MAX_TEXT_CHARS})")
        return text

    # --- the prompt ----------------------------------------------------------------------------
    def build(self, text: str, language: str | None = "auto", *, non_streaming: bool = False,
              xvector: np.ndarray | None = None, ref_codes: np.ndarray | None = None,
              ref_text: str | None = None) -> Prompt:
        text = self.check_text(text)
        lang_id = self.language_id(language)
        ids = self.encode(text, "<|im_start|>assistant\n{}<|im_end|>\n<|im_start|>assistant\n")
        text_ids = ids[3:-5]  # the official code slices these fixed offsets (= text_ids())
        if not text_ids:
            raise InvalidText("text produced no tokens")
        sp = self.sp
        pad, bos, eos = self._pad, self._bos, self._eos

        codec_rows = [self.C([sp["think"], sp["think_bos"], lang_id, sp["think_eos"]]) if lang_id is not None
                      else self.C([sp["nothink"], sp["think_bos"], sp["think_eos"]])]
        if xvector is not None:
            xv = np.asarray(xvector, dtype=np.float32).reshape(-1)
            if xv.shape[0] != self.hidden or not np.all(np.isfinite(xv)):
                raise InvalidRequest(f"x-vector must be {self.hidden} finite floats, got shape {xv.shape}")
            codec_rows.append(xv[None, :])
        codec_rows.append(self.C([sp["codec_pad"], sp["codec_bos"]]))
        Q = np.concatenate(codec_rows, axis=0)
        n = Q.shape[0]
        head_text = np.concatenate([np.repeat(pad[None], n - 2, axis=0), bos[None]], axis=0)
        rows = [self.T(ids[:3]), head_text + Q[:-1]]
        fixed = 3 + n - 1  # the head depends on the language and the voice only

        if ref_codes is not None:
            if ref_text is None:
                raise InvalidRequest("in-context voice cloning needs the reference transcript")
            ref_text = self.check_text(ref_text, "reference text")
            ref_ids = self.encode(ref_text, "<|im_start|>assistant\n{}<|im_end|>\n")[3:-2]
            ref_codes = np.asarray(ref_codes, dtype=np.int64)
            cb = self.md.predictor["codebook_size"]
            if ref_codes.ndim != 2 or ref_codes.shape[1] != 16 or ref_codes.size == 0 \
                    or ref_codes.min() < 0 or ref_codes.max() >= cb:
                raise InvalidRequest(f"reference codes must be [frames, 16] in 0..{cb - 1}")
            X = np.concatenate([self.T(ref_ids + text_ids), eos[None]], axis=0)
            Y = np.concatenate([self.C([sp["codec_bos"]]),
                                frame_embeddings(self.codec, self.pred_tables, ref_codes)], axis=0)
            # the rows that carry only reference text (and reference frames) are fixed too
            fixed += len(ref_ids) if non_streaming else min(len(ref_ids), len(Y))
            if non_streaming:
                rows += [X + self.C([sp["codec_pad"]] * len(X)), Y + pad]
                trailing = pad[None]
            elif len(X) > len(Y):
                rows.append(X[:len(Y)] + Y)
                trailing = X[len(Y):]
            else:
                Xp = np.concatenate([X, np.repeat(pad[None], len(Y) - len(X), axis=0)], axis=0)
                rows.append(Xp + Y)
                trailing = pad[None]
        elif non_streaming:
            body = np.concatenate([self.T(text_ids), eos[None]], axis=0)
            rows += [body + self.C([sp["codec_pad"]] * len(body)), (pad + self.C(sp["codec_bos"]))[None]]
            trailing = pad[None]
        else:
            rows.append(self.T(text_ids[:1]) + Q[-1:])
            trailing = np.concatenate([self.T(text_ids[1:]), eos[None]], axis=0)
        prefill = np.ascontiguousarray(np.concatenate(rows, axis=0), dtype=np.float32)
        return Prompt(prefill=prefill, trailing=np.ascontiguousarray(trailing, dtype=np.float32),
                      pad=pad, n_text_tokens=len(text_ids), n_fixed=min(fixed, len(prefill) - 1))

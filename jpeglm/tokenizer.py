"""Tokenizers: symbols (codec output) <-> token ids, and their Hugging Face form on disk.

Three kinds share one API and the same special ids (`<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3):
- `ByteTokenizer`: one token per byte (ids 4..259), then `<extra_i>` tokens for modality/class.
- `BpeTokenizer`: a sentencepiece BPE over the text `chr(b + 0x2800)` (one braille character per
  byte, the mapping of the released JPEG-LM checkpoint); extras sit after the sentencepiece vocab.
- `CodeTokenizer`: one token per VQ / palette code (ids 4..4+num_codes-1), then extras.

Class tokens (class-conditional models): a tokenizer made `with_classes(names)` has one token
`<class_i>` per class and `<class_null>` (the unconditional "no class"), appended after every other
id (ids `class_offset + i`, null at `class_offset + num_classes`), so a tokenizer without classes
keeps every id, and a dataset prepared without labels keeps its records byte for byte. A labelled
tokenizer puts the class token right after BOS: `encode(s, label=i)`; `label=None` (what callers
that know nothing of classes pass) gives the null class, i.e. the unconditional path. The class
names are saved in jpeglm_tokenizer.json; the tokens are HF special tokens, so
`AutoTokenizer(class_text(i) + to_text(s))` gives `encode(s, label=i, eos=False)`.

`save_pretrained(dir)` writes files that `transformers.AutoTokenizer.from_pretrained(dir)` loads
without `trust_remote_code` and that give the same ids as `encode(symbols, bos=True, eos=False)`
on `tokenizer.to_text(symbols)` (HF follows Llama: BOS added, EOS not). `load_tokenizer(dir)`
reads our saves and the released JPEG-LM tokenizer format (tokenizer.model + tokenizer_config.json).
The HF files are built with the `tokenizers` library directly; no torch, no transformers here.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from jpeglm.config import atomic_write_bytes, atomic_write_text
from jpeglm.errors import UserError

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
NUM_SPECIALS = len(SPECIALS)
BYTE_CHAR_OFFSET = 0x2800  # byte b <-> chr(b + 0x2800): the braille block, as in the JPEG-LM release
META_FILE = "jpeglm_tokenizer.json"  # our own saves carry this; a dir without it is the released format
FORMAT_VERSION = 1
NULL_CLASS = -1  # `label=NULL_CLASS`: the null class token (the unconditional path of a labelled model)
NULL_CLASS_TOKEN = "<class_null>"


class TokenizerError(UserError, ValueError):
    """A tokenizer directory or input that cannot be used."""


# --- bytes <-> braille text -------------------------------------------------------------------


def bytes_to_text(data: bytes | bytearray | memoryview) -> str:
    """Bytes -> the JPEG-LM text form, one character chr(b + 0x2800) per byte (vectorised)."""
    arr = np.frombuffer(bytes(data), dtype=np.uint8).astype("<u4") + BYTE_CHAR_OFFSET
    return arr.tobytes().decode("utf-32-le")


def text_to_bytes(text: str) -> bytes:
    """The JPEG-LM text form -> bytes. Characters outside U+2800..U+28FF (a sentencepiece "▁"
    dummy prefix, spaces from an HF decode) carry no byte and are dropped."""
    arr = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64) - BYTE_CHAR_OFFSET
    return arr[(arr >= 0) & (arr < 256)].astype(np.uint8).tobytes()


def _as_bytes(symbols) -> bytes:
    if isinstance(symbols, (bytes, bytearray, memoryview)):
        return bytes(symbols)
    if isinstance(symbols, np.ndarray) and symbols.dtype == np.uint8:
        return symbols.tobytes()
    raise TypeError(f"a byte tokenizer encodes bytes, not {type(symbols).__name__}")


def _as_id_array(ids) -> np.ndarray:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"token ids must be a 1-D sequence of ints, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64)


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# --- the shared API -----------------------------------------------------------------------------


class Tokenizer:
    """Base class. Subclasses set `kind`, fill `_base_size` (ids before the extras) and implement
    `encode_body`, `decode`, `to_text` and `_hf_tokenizer` (a `tokenizers.Tokenizer`)."""

    kind: str = ""

    def __init__(self, num_extra: int, base_size: int, class_names: Sequence[str] | None = None):
        if not isinstance(num_extra, int) or num_extra < 0:
            raise ValueError(f"num_extra must be an int >= 0, got {num_extra!r}")
        self.num_extra = num_extra
        self._base_size = base_size
        self._table: list[bytes | None] | None = None
        self.class_names: tuple[str, ...] = ()
        if class_names:
            self._set_classes(class_names)

    # classes ------------------------------------------------------------------------------------
    def _set_classes(self, names: Sequence[str]) -> None:
        names = tuple(str(n) for n in names)
        if not names:
            raise ValueError("a class-conditional tokenizer needs at least one class name")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"class names must be unique, got duplicates {dup[:5]}")
        if any(not n for n in names):
            raise ValueError("class names must be non-empty")
        self.class_names = names
        self._table = None

    def with_classes(self, names: Sequence[str]) -> Tokenizer:
        """A copy of this tokenizer with one class token per name (in id order) plus the null class,
        appended after all existing ids (so every other id stays what it was)."""
        import copy

        if self.class_names:
            raise ValueError("this tokenizer already has class tokens")
        tok = copy.copy(self)
        tok._set_classes(names)
        return tok

    @property
    def num_classes(self) -> int:
        """Number of real classes (0: not class-conditional); the null class is one token more."""
        return len(self.class_names)

    @property
    def class_offset(self) -> int:
        """Id of `<class_0>` (right after the extras)."""
        return self._base_size + self.num_extra

    @property
    def null_class_id(self) -> int | None:
        """Id of `<class_null>`, None without classes."""
        return self.class_offset + self.num_classes if self.class_names else None

    @property
    def class_tokens(self) -> list[str]:
        return [f"<class_{i}>" for i in range(self.num_classes)] + ([NULL_CLASS_TOKEN] if self.class_names else [])

    def class_index(self, name: str) -> int:
        """The class id (0..num_classes-1) of a class name; the error lists the known names."""
        try:
            return self.class_names.index(str(name))
        except ValueError:
            known = ", ".join(self.class_names) if self.class_names else "none: this tokenizer has no classes"
            raise KeyError(f"unknown class {name!r} (known: {known})") from None

    def class_token_id(self, label: int | None) -> int:
        """Token id of class `label` (0..num_classes-1), or of the null class for None / NULL_CLASS."""
        if not self.class_names:
            raise ValueError("this tokenizer has no class tokens (a model trained without labels)")
        if label is None or label == NULL_CLASS:
            return self.null_class_id
        if not 0 <= int(label) < self.num_classes:
            raise ValueError(f"class id {label} out of range (num_classes={self.num_classes})")
        return self.class_offset + int(label)

    def class_text(self, label: int | None) -> str:
        """The HF text of a class token (prepend it to `to_text(s)`)."""
        return self.class_tokens[self.class_token_id(label) - self.class_offset]

    def label_of(self, ids) -> int | None:
        """The class a token sequence starts with (BOS, class token): its id, NULL_CLASS, or None."""
        ids = list(ids[:2])
        if not self.class_names or len(ids) < 2 or ids[0] != self.bos_id:
            return None
        k = int(ids[1]) - self.class_offset
        return k if 0 <= k < self.num_classes else NULL_CLASS if k == self.num_classes else None

    # ids --------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids (embedding rows a model needs), extras and class tokens included."""
        return self._base_size + self.num_extra + (self.num_classes + 1 if self.class_names else 0)

    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID

    @property
    def extra_offset(self) -> int:
        """Id of `<extra_0>`."""
        return self._base_size

    @property
    def extra_tokens(self) -> list[str]:
        return [f"<extra_{i}>" for i in range(self.num_extra)]

    def special_id(self, name: str | int) -> int:
        """Id of a special token: "<s>", "</s>", "<pad>", "<unk>", "<extra_3>" / "extra_3", or the
        int 3 for `<extra_3>`. Raises KeyError for a name this tokenizer does not have."""
        if isinstance(name, int):
            if not 0 <= name < self.num_extra:
                raise KeyError(f"extra token {name} out of range (num_extra={self.num_extra})")
            return self.extra_offset + name
        fixed = {"<unk>": self.unk_id, "<s>": self.bos_id, "</s>": self.eos_id, "<pad>": self.pad_id}
        if name in fixed:
            return fixed[name]
        stripped = name.strip("<>")
        if stripped.startswith("extra_") and stripped[6:].isdigit():
            return self.special_id(int(stripped[6:]))
        raise KeyError(f"unknown special token {name!r} (have {sorted(fixed)} and <extra_0..{self.num_extra - 1}>)")

    # symbols <-> ids --------------------------------------------------------------------------
    def encode_body(self, symbols) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def encode(self, symbols, bos: bool = True, eos: bool = True, label: int | None = None) -> list[int]:
        """Symbols -> token ids, with BOS first / EOS last when asked (shard records have both).
        A labelled tokenizer adds the class token of `label` after BOS (None: the null class)."""
        ids = self.encode_body(symbols)
        return self.prefix(label, bos) + ids + ([self.eos_id] if eos else [])

    def prefix(self, label: int | None = None, bos: bool = True) -> list[int]:
        """What every sequence starts with: BOS, then the class token for a labelled tokenizer."""
        if label is not None and not self.class_names:
            raise ValueError("a class label was given but this tokenizer has no class tokens")
        if not bos:
            return []
        return [self.bos_id] + ([self.class_token_id(label)] if self.class_names else [])

    def decode(self, ids):  # pragma: no cover - interface
        raise NotImplementedError

    def to_text(self, symbols) -> str:  # pragma: no cover - interface
        """The text form the saved HF tokenizer takes: AutoTokenizer(to_text(s)) == encode(s, eos=False)."""
        raise NotImplementedError

    def dropped_count(self, ids) -> int:
        """How many of `ids` `decode` drops because they stand for no symbol (specials, extras,
        unknown ids, sentencepiece's lone "▁" dummy-prefix piece): counted in sample manifests."""
        empty: dict[int, bool] = {}
        for i in _as_id_array(ids).tolist():
            if i not in empty:
                empty[i] = len(self.decode([i])) == 0
        return sum(empty[i] for i in _as_id_array(ids).tolist())

    def token_bytes(self, token_id: int) -> bytes | None:
        """The bytes a token stands for, None for specials/extras/unknown ids (and for code tokens)."""
        table = self.token_bytes_table()
        return table[token_id] if 0 <= token_id < len(table) else None

    def token_bytes_table(self) -> list[bytes | None]:
        """`token_bytes` for every id, computed once (the sampler's grammar constraint reads it)."""
        if self._table is None:
            table = self._build_table()
            self._table = table + [None] * (self.vocab_size - len(table))  # class tokens: no bytes
        return self._table

    def _build_table(self) -> list[bytes | None]:
        return [None] * self.vocab_size

    # on disk ------------------------------------------------------------------------------------
    def to_config(self) -> dict:
        """Plain dict describing this tokenizer (stored in shard manifests and checkpoints)."""
        cfg = {"kind": self.kind, "vocab_size": self.vocab_size, "num_extra": self.num_extra,
               "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id, "unk_id": self.unk_id}
        if self.class_names:  # only then: unconditional configs (and dataset fingerprints) stay as they were
            cfg["class_names"] = list(self.class_names)
        return cfg

    def _hf_tokenizer(self):  # pragma: no cover - interface
        raise NotImplementedError

    def _hf_config(self) -> dict:
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
            "add_bos_token": True, "add_eos_token": False,
            "additional_special_tokens": self.extra_tokens + self.class_tokens,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,  # no limit of its own; the model's context decides
        }

    def _extra_files(self) -> dict[str, bytes]:
        return {}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the HF files plus jpeglm_tokenizer.json; every file atomically, meta file last."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name, data in self._extra_files().items():
            atomic_write_bytes(d / name, data)
        hf = self._hf_tokenizer()
        if hf is not None:
            atomic_write_text(d / "tokenizer.json", hf.to_str(pretty=False))
        _write_json(d / "tokenizer_config.json", {**self._hf_config(), "jpeglm_tokenizer": self.kind})
        _write_json(d / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
        _write_json(d / META_FILE, {"format": "jpeglm-tokenizer", "version": FORMAT_VERSION, **self.to_config()})
        return d

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.to_config().items() if k.endswith(("size", "extra", "codes"))}
        if self.class_names:
            shown["num_classes"] = self.num_classes
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in shown.items())})"

    # shared HF pieces -----------------------------------------------------------------------------
    def _hf_finish(self, tok, added_specials: Sequence[tuple[str, int]]):
        """Add specials/extras as special added tokens and a Llama-style BOS post-processor."""
        from tokenizers import AddedToken, processors

        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", self.bos_id)])
        added_specials = list(added_specials) + [(s, self.class_offset + i) for i, s in enumerate(self.class_tokens)]
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s, _ in added_specials])
        for s, i in added_specials:  # the ids must be ours, not whatever order tokenizers chose
            if tok.token_to_id(s) != i:
                raise TokenizerError(f"HF tokenizer put {s} at {tok.token_to_id(s)}, expected {i}")
        return tok


class ByteTokenizer(Tokenizer):
    """One token per byte: id = byte + 4; `<extra_i>` at 260 + i."""

    kind = "byte"

    def __init__(self, num_extra: int = 16, class_names: Sequence[str] | None = None):
        super().__init__(num_extra, NUM_SPECIALS + 256, class_names)

    def encode_body(self, symbols) -> list[int]:
        return (np.frombuffer(_as_bytes(symbols), dtype=np.uint8).astype(np.int64) + NUM_SPECIALS).tolist()

    def decode(self, ids) -> bytes:
        """Ids -> bytes; specials, extras and unknown ids are dropped."""
        arr = _as_id_array(ids)
        arr = arr[(arr >= NUM_SPECIALS) & (arr < NUM_SPECIALS + 256)]
        return (arr - NUM_SPECIALS).astype(np.uint8).tobytes()

    def to_text(self, symbols) -> str:
        return bytes_to_text(_as_bytes(symbols))

    def _build_table(self) -> list[bytes | None]:
        return [None] * NUM_SPECIALS + [bytes([b]) for b in range(256)] + [None] * self.num_extra

    def _hf_tokenizer(self):
        from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        vocab = {s: i for i, s in enumerate(SPECIALS)}
        vocab.update({chr(BYTE_CHAR_OFFSET + b): NUM_SPECIALS + b for b in range(256)})
        vocab.update({s: self.extra_offset + i for i, s in enumerate(self.extra_tokens)})
        tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        # every character is its own word (the braille text has no spaces to split on)
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
        tok.decoder = decoders.Fuse()  # join tokens without spaces
        return self._hf_finish(tok, [(s, i) for i, s in enumerate(SPECIALS)]
                               + [(s, self.extra_offset + i) for i, s in enumerate(self.extra_tokens)])


class CodeTokenizer(Tokenizer):
    """One token per code of a VQ codebook or pixel palette: id = code + 4; extras after.

    HF text form: the codes as space-separated words "c0 c17 c5" (a WordLevel vocabulary), since
    2^18 codes do not fit in any one Unicode block."""

    kind = "code"

    def __init__(self, num_codes: int, num_extra: int = 16, class_names: Sequence[str] | None = None):
        if not isinstance(num_codes, (int, np.integer)) or num_codes < 1:
            raise ValueError(f"num_codes must be a positive int, got {num_codes!r}")
        self.num_codes = int(num_codes)
        super().__init__(num_extra, NUM_SPECIALS + self.num_codes, class_names)

    def encode_body(self, symbols) -> list[int]:
        arr = np.asarray(symbols)
        if arr.size == 0:
            return []
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"a code tokenizer encodes a 1-D int array, got shape {arr.shape} dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.min() < 0 or arr.max() >= self.num_codes:
            raise ValueError(f"codes must lie in [0, {self.num_codes}), got range [{arr.min()}, {arr.max()}]")
        return (arr + NUM_SPECIALS).tolist()

    def decode(self, ids) -> np.ndarray:
        """Ids -> int64 codes; specials, extras and unknown ids are dropped."""
        arr = _as_id_array(ids)
        return arr[(arr >= NUM_SPECIALS) & (arr < NUM_SPECIALS + self.num_codes)] - NUM_SPECIALS

    def to_text(self, symbols) -> str:
        return " ".join(f"c{int(c)}" for c in np.asarray(symbols).reshape(-1))

    def to_config(self) -> dict:
        return {**super().to_config(), "num_codes": self.num_codes}

    def _hf_tokenizer(self):
        from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

        vocab = {s: i for i, s in enumerate(SPECIALS)}
        vocab.update({f"c{c}": NUM_SPECIALS + c for c in range(self.num_codes)})
        vocab.update({s: self.extra_offset + i for i, s in enumerate(self.extra_tokens)})
        tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # no decoder: tokenizers joins tokens with single spaces, which is the text form
        return self._hf_finish(tok, [(s, i) for i, s in enumerate(SPECIALS)]
                               + [(s, self.extra_offset + i) for i, s in enumerate(self.extra_tokens)])


class BpeTokenizer(Tokenizer):
    """Sentencepiece BPE over the braille text of the bytes (the JPEG-LM release's tokenizer).

    Ids 0..3 are the specials, then the sentencepiece pieces (every single byte character is
    guaranteed a piece, so every byte string round-trips exactly), then `<extra_i>` tokens, which
    live only in our tokenizer and its tokenizer.json, not in tokenizer.model.
    A released JPEG-LM tokenizer (`released=True`) may use sentencepiece's "▁" dummy prefix; its
    encode is then what the release's inference does (`tokenizer(text)`: BOS + sentencepiece
    pieces, "▁" included) and decode keeps only the U+2800..U+28FF characters.
    """

    kind = "bpe"

    def __init__(self, model_proto: bytes, num_extra: int = 16, released: bool = False):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on a bad proto
            raise TokenizerError(f"not a sentencepiece model: {e}") from e
        self.released = released
        super().__init__(num_extra, self.sp.get_piece_size())
        sp = self.sp
        if sp.bos_id() < 0 or sp.eos_id() < 0 or sp.unk_id() < 0:
            raise TokenizerError("the sentencepiece model lacks <unk>, <s> or </s>")
        self.unk_id, self.bos_id, self.eos_id = sp.unk_id(), sp.bos_id(), sp.eos_id()
        # Llama-style released models have no pad piece; padding positions are masked anyway, so
        # unk (never produced from byte text whose characters are all in the vocab) serves as pad.
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else sp.unk_id()
        if not released and (self.unk_id, self.bos_id, self.eos_id, self.pad_id) != (UNK_ID, BOS_ID, EOS_ID, PAD_ID):
            raise TokenizerError(f"special ids must be unk/bos/eos/pad = 0/1/2/3, got "
                                 f"{(self.unk_id, self.bos_id, self.eos_id, self.pad_id)}")
        # detect the dummy prefix from behaviour (no protobuf parse needed)
        self.add_dummy_prefix = sp.encode(chr(BYTE_CHAR_OFFSET), out_type=str)[0].startswith("\u2581")

    # construction -----------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, num_extra: int = 16, released: bool = False) -> "BpeTokenizer":
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path} does not exist")
        return cls(path.read_bytes(), num_extra=num_extra, released=released)

    @classmethod
    def train(cls, data: Iterable[bytes], vocab_size: int = 320, num_extra: int = 16, max_sentences: int = 20000,
              max_piece_length: int = 16, seed: int = 0, num_threads: int = 1) -> "BpeTokenizer":
        """Train on an iterable of byte strings (one per file). Deterministic for the same input.

        `vocab_size` is the sentencepiece vocabulary (4 specials + 256 byte characters + merges,
        the paper's 320 by default); the extras come on top. At most `max_sentences` items are
        used, picked by seeded reservoir sampling so memory stays bounded on any corpus.
        Training is bit-reproducible with `num_threads=1` only (more threads reorder tied merges).
        """
        import sentencepiece as spm

        if vocab_size < NUM_SPECIALS + 256 + 1:
            raise TokenizerError(f"vocab_size must be > {NUM_SPECIALS + 256} (specials + one piece per byte), got {vocab_size}")
        rng = random.Random(seed)
        sample: list[bytes] = []
        seen = 0
        for item in data:
            item = _as_bytes(item)
            if not item:
                continue
            seen += 1
            if len(sample) < max_sentences:
                sample.append(item)
            else:
                j = rng.randrange(seen)
                if j < max_sentences:
                    sample[j] = item
        if not sample:
            raise TokenizerError("no non-empty training data for the BPE tokenizer")
        alphabet = [chr(BYTE_CHAR_OFFSET + b) for b in range(256)]
        # required_chars alone keeps only characters seen in the data: add each byte character as
        # a one-character sentence, so it is a piece without adding any pair counts to the merges
        sentences = [bytes_to_text(b) for b in sample] + alphabet
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=model, model_type="bpe", vocab_size=vocab_size,
                # every byte character is a piece, seen in training or not: exact round trips
                character_coverage=1.0, required_chars="".join(alphabet), byte_fallback=False,
                # the text is an opaque byte stream: no normalisation, no "▁" prefix, no splitting
                normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
                split_by_whitespace=False, split_by_unicode_script=False, split_by_number=False, split_digits=False,
                max_sentencepiece_length=max_piece_length,
                # a braille character is 3 UTF-8 bytes; longer sentences would be dropped silently
                max_sentence_length=max(len(s) for s in sentences) * 3 + 16,
                input_sentence_size=0, shuffle_input_sentence=False,
                unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
                num_threads=num_threads, minloglevel=2,
            )
        except RuntimeError as e:
            raise TokenizerError(f"sentencepiece training failed ({len(sample)} items, vocab {vocab_size}): {e}") from e
        tok = cls(model.getvalue(), num_extra=num_extra)
        missing = [b for b in range(256) if tok.sp.piece_to_id(chr(BYTE_CHAR_OFFSET + b)) == tok.unk_id]
        if missing:  # required_chars should make this impossible; never ship a lossy tokenizer
            raise TokenizerError(f"trained BPE lacks pieces for bytes {missing[:8]}...")
        tok.train_info = {"items_seen": seen, "items_used": len(sample), "seed": seed, "max_piece_length": max_piece_length}
        return tok

    # API ----------------------------------------------------------------------------------------
    def encode_body(self, symbols) -> list[int]:
        return self.sp.encode(bytes_to_text(_as_bytes(symbols)))

    def decode(self, ids) -> bytes:
        """Ids -> bytes; specials, extras, unknown ids and the "▁" of a dummy prefix are dropped."""
        table = self.token_bytes_table()
        n = len(table)
        return b"".join([t for t in (table[i] if 0 <= i < n else None for i in _as_id_array(ids).tolist()) if t])

    def to_text(self, symbols) -> str:
        return bytes_to_text(_as_bytes(symbols))

    def _build_table(self) -> list[bytes | None]:
        sp = self.sp
        table: list[bytes | None] = []
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i):
                table.append(None)  # byte-fallback pieces would be UTF-8 bytes of text, not file bytes
            else:
                table.append(text_to_bytes(sp.id_to_piece(i)))  # a lone "▁" gives b""
        return table + [None] * self.num_extra

    def to_config(self) -> dict:
        return {**super().to_config(), "sp_vocab_size": self._base_size, "add_dummy_prefix": self.add_dummy_prefix,
                "released": self.released}

    # HF files -----------------------------------------------------------------------------------
    def merges(self) -> list[tuple[str, str]]:
        """BPE merges for HF `tokenizers`, derived from the pieces as transformers does: every split
        of a piece into two pieces, ranked by the merged piece's id (sentencepiece merges the pair
        whose result has the best score, and BPE scores fall with the id)."""
        sp = self.sp
        vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        found = []
        for piece, i in vocab.items():
            if sp.is_control(i) or sp.is_unknown(i):
                continue
            for k in range(1, len(piece)):
                left, right = piece[:k], piece[k:]
                if left in vocab and right in vocab:
                    found.append((i, vocab[left], vocab[right], left, right))
        found.sort()
        return [(left, right) for *_, left, right in found]

    def _hf_tokenizer(self):
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        sp = self.sp
        vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=self.merges(), unk_token=sp.id_to_piece(self.unk_id),
                                     fuse_unk=True, byte_fallback=False))
        if self.add_dummy_prefix:  # what sentencepiece does: "▁" before the first piece only
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        tok.decoder = decoders.Fuse()
        specials = [(sp.id_to_piece(i), i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
        return self._hf_finish(tok, specials + [(s, self.extra_offset + i) for i, s in enumerate(self.extra_tokens)])

    def _hf_config(self) -> dict:
        sp = self.sp
        cfg = super()._hf_config()
        cfg.update({
            # the class of the released JPEG-LM checkpoint; transformers rebuilds it from
            # tokenizer.json (or converts tokenizer.model when that is all there is)
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": sp.id_to_piece(self.bos_id), "eos_token": sp.id_to_piece(self.eos_id),
            "unk_token": sp.id_to_piece(self.unk_id), "pad_token": sp.id_to_piece(self.pad_id),
            # Llama's Metaspace would otherwise prepend "▁" to the text, which our pieces lack
            "add_prefix_space": self.add_dummy_prefix, "legacy": False,
        })
        return cfg

    def _extra_files(self) -> dict[str, bytes]:
        return {"tokenizer.model": self.model_proto}


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved by `save_pretrained`, or a released JPEG-LM tokenizer directory
    (tokenizer.model + tokenizer_config.json, no jpeglm_tokenizer.json) as a BpeTokenizer."""
    d = Path(directory)
    if not d.is_dir():
        raise TokenizerError(f"tokenizer directory {d} does not exist")
    meta_path = d / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{meta_path} is not valid JSON: {e}") from e
        kind = meta.get("kind")
        names = meta.get("class_names") or None
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise TokenizerError(f"{meta_path}: class_names must be a list of strings")
        if kind == "byte":
            tok: Tokenizer = ByteTokenizer(num_extra=int(meta.get("num_extra", 16)))
        elif kind == "code":
            tok = CodeTokenizer(int(meta["num_codes"]), num_extra=int(meta.get("num_extra", 16)))
        elif kind == "bpe":
            tok = BpeTokenizer.from_file(d / "tokenizer.model", num_extra=int(meta.get("num_extra", 16)),
                                         released=bool(meta.get("released", False)))
        else:
            raise TokenizerError(f"{meta_path}: unknown tokenizer kind {kind!r} (expected byte, bpe or code)")
        if names:
            tok = tok.with_classes(names)
        if "vocab_size" in meta and meta["vocab_size"] != tok.vocab_size:
            raise TokenizerError(f"{meta_path}: vocab_size {meta['vocab_size']} does not match the files ({tok.vocab_size})")
        return tok
    if (d / "tokenizer.model").is_file():
        # the released JPEG-LM format: a Llama sentencepiece model over chr(b + 0x2800) text
        return BpeTokenizer.from_file(d / "tokenizer.model", num_extra=0, released=True)
    raise TokenizerError(f"{d} holds neither {META_FILE} (a jpeglm tokenizer) nor tokenizer.model (released JPEG-LM format)")


def tokenizer_from_config(cfg: dict, base_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Rebuild a tokenizer from `to_config()` (+ "path" relative to base_dir for BPE, as in shard
    manifests). Byte and code tokenizers need no files."""
    kind = cfg.get("kind")
    names = cfg.get("class_names") or None
    if cfg.get("path") is not None:
        path = Path(cfg["path"])
        return load_tokenizer(path if base_dir is None or path.is_absolute() else Path(base_dir) / path)
    if kind == "byte":
        return ByteTokenizer(num_extra=int(cfg.get("num_extra", 16)), class_names=names)
    if kind == "code":
        return CodeTokenizer(int(cfg["num_codes"]), num_extra=int(cfg.get("num_extra", 16)), class_names=names)
    raise TokenizerError(f"cannot rebuild a {kind!r} tokenizer from its config alone; it needs a 'path'")


__all__ = ["NULL_CLASS", "NULL_CLASS_TOKEN", "SPECIALS", "UNK_ID", "BOS_ID", "EOS_ID", "PAD_ID", "BYTE_CHAR_OFFSET", "TokenizerError", "Tokenizer",
           "ByteTokenizer", "BpeTokenizer", "CodeTokenizer", "load_tokenizer", "tokenizer_from_config",
           "bytes_to_text", "text_to_bytes"]

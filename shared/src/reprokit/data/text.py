"""Text corpora and tokenisers.

Sources, each returning a `TextCorpus` with a fixed train/validation split:

- ``stdlib_corpus()``: the offline default, the Python standard library's own ``.py`` files
  (every machine with Python has them), chosen and split deterministically by path;
- ``local_corpus(paths)``: local text files or folders of them;
- ``hf_corpus(name, ...)``: any Hugging Face dataset, streamed, when online.

Tokenisers: ``ByteTokenizer`` (offline, vocab 256) and ``HFTokenizer`` (GPT-2, cl100k-style
BPEs from the hub, online). ``TokenStream`` serves random training windows and fixed
validation windows from a 1-D token tensor.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reprokit.errors import ConfigError, DatasetError, require_online


@dataclass(frozen=True)
class TextCorpus:
    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]

    @property
    def n_chars(self) -> int:
        return sum(len(t) for t in self.train) + sum(len(t) for t in self.validation)

    def __post_init__(self):
        if not self.train or not any(self.train):
            raise DatasetError(f"text corpus {self.name!r} has no training text")
        if not self.validation:
            raise DatasetError(f"text corpus {self.name!r} has no validation text")


def _in_validation(key: str, fraction: float) -> bool:
    """Split by a hash of the document's key: stable across runs, machines and orderings."""
    digest = hashlib.sha1(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


SINGLE_DOC_CHUNKS = 100  # a one-document corpus is cut into this many pieces before the split


def _chunks(key: str, text: str, n: int) -> list[tuple[str, str]]:
    """`text` cut into about `n` consecutive pieces, each ending at a line break when one is
    near, keyed ``<key>#<i>`` so the hashed split stays stable."""
    size = max(1, -(-len(text) // n))
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            newline = text.find("\n", end, end + size // 4 + 1)
            end = newline + 1 if newline >= 0 else end
        pieces.append((f"{key}#{len(pieces)}", text[start:end]))
        start = end
    return pieces


def _split(name: str, docs: Sequence[tuple[str, str]], val_fraction: float) -> TextCorpus:
    # One document (a single file, e.g. shakespeare.txt) cannot be split by document: cut it
    # into chunks first, so that one file still yields training and validation text.
    if len(docs) == 1:
        docs = _chunks(*docs[0], SINGLE_DOC_CHUNKS)
    train, val = [], []
    for key, text in docs:
        (val if _in_validation(key, val_fraction) else train).append(text)
    if not val and len(train) > 1:  # tiny corpora: keep at least one validation document
        val.append(train.pop())
    return TextCorpus(name, tuple(train), tuple(val))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_corpus(max_chars: int | None = 4_000_000, val_fraction: float = 0.05) -> TextCorpus:
    """The standard library's ``.py`` files (tests, site-packages and vendored code left out).

    Files are taken in sorted path order until `max_chars`; the split depends only on each
    file's relative path, so the same Python version always gives the same corpus.
    """
    root = stdlib_root()
    skip = {"test", "tests", "site-packages", "dist-packages", "idlelib", "__pycache__",
            "lib2to3", "ensurepip", "turtledemo"}
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip.intersection(rel.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        if max_chars is not None and total + len(text) > max_chars:
            break
        docs.append((rel.as_posix(), text))
        total += len(text)
    if not docs:
        raise DatasetError(f"no Python source files found under {root}")
    return _split(f"python-stdlib-{sysconfig.get_python_version()}", docs, val_fraction)


def local_corpus(paths: Iterable[str | os.PathLike], val_fraction: float = 0.05,
                 suffixes: Sequence[str] = (".txt", ".md", ".py")) -> TextCorpus:
    """Text files, or folders searched recursively for files ending in `suffixes`."""
    docs = []
    for entry in paths:
        p = Path(entry)
        if not p.exists():
            raise DatasetError(f"text path {p} does not exist")
        files = sorted(f for f in p.rglob("*") if f.suffix in suffixes) if p.is_dir() else [p]
        for f in files:
            try:
                docs.append((str(f), f.read_text(encoding="utf-8")))
            except UnicodeDecodeError as err:
                raise DatasetError(f"text file {f} is not UTF-8: {err}") from err
    docs = [(k, t) for k, t in docs if t.strip()]
    if not docs:
        raise DatasetError(f"no non-empty text found in {list(map(str, paths))}")
    return _split("local:" + ",".join(map(str, paths)), docs, val_fraction)


def hf_corpus(name: str, config: str | None = None, split: str = "train",
              text_field: str = "text", max_docs: int = 100_000, val_fraction: float = 0.01,
              streaming: bool = True) -> TextCorpus:
    """A Hugging Face dataset (streamed), e.g. ``HuggingFaceFW/fineweb-edu`` ``sample-10BT``."""
    require_online(f"Hugging Face dataset {name!r}", "the embedded corpus (data.source=stdlib)")
    from datasets import load_dataset

    ds = load_dataset(name, config, split=split, streaming=streaming)
    docs = []
    for i, row in enumerate(ds):
        if i >= max_docs:
            break
        if text_field not in row:
            raise DatasetError(f"dataset {name!r} has no field {text_field!r}; fields: {list(row)}")
        docs.append((f"{name}/{i}", row[text_field]))
    return _split(f"hf:{name}", docs, val_fraction)


def load_corpus(source: str, **kw) -> TextCorpus:
    """``stdlib``, ``hf:<name>[:<config>]``, or a local path (file or folder)."""
    if source == "stdlib":
        return stdlib_corpus(**kw)
    if source.startswith("hf:"):
        parts = source[3:].split(":")
        return hf_corpus(parts[0], parts[1] if len(parts) > 1 else None, **kw)
    return local_corpus([source], **kw)


# ---------------------------------------------------------------- tokenisers


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no training, works everywhere."""

    vocab_size = 256
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A pretrained BPE from the hub (``gpt2``, ``Xenova/gpt-4`` for cl100k...)."""

    def __init__(self, name: str = "gpt2"):
        require_online(f"tokenizer {name!r}", "the byte-level tokenizer (--tokenizer bytes)")
        from transformers import AutoTokenizer

        self.name = name
        self._tok = AutoTokenizer.from_pretrained(name)
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


def get_tokenizer(name: str):
    return ByteTokenizer() if name == "bytes" else HFTokenizer(name)


def encode_documents(docs: Sequence[str], tokenizer, separator: str = "\n\n") -> torch.Tensor:
    """Concatenate documents into one token tensor (uint8 for bytes, int32 otherwise)."""
    text = separator.join(docs)
    if isinstance(tokenizer, ByteTokenizer):
        return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy())
    return torch.tensor(tokenizer.encode(text), dtype=torch.int32)


class TokenStream:
    """Training windows at random offsets and fixed validation windows from one token tensor."""

    def __init__(self, tokens: torch.Tensor, block_size: int):
        if tokens.ndim != 1:
            raise ConfigError("TokenStream expects a 1-D token tensor")
        if tokens.numel() <= block_size + 1:
            raise DatasetError(
                f"corpus has {tokens.numel()} tokens, fewer than one block of {block_size + 1}")
        self.tokens = tokens
        self.block_size = block_size

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (inputs, targets) windows, reproducible through `generator`."""
        starts = torch.randint(0, self.tokens.numel() - self.block_size - 1, (batch_size,),
                               generator=generator)
        idx = starts[:, None] + torch.arange(self.block_size + 1)[None, :]
        chunk = self.tokens[idx].long()
        return chunk[:, :-1], chunk[:, 1:]

    def fixed_batches(self, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Evenly spaced windows: the same every call, for validation and probes."""
        n = batch_size * n_batches
        span = self.tokens.numel() - self.block_size - 1
        starts = torch.linspace(0, span - 1, n).long()
        idx = starts[:, None] + torch.arange(self.block_size + 1)[None, :]
        chunk = self.tokens[idx].long().view(n_batches, batch_size, self.block_size + 1)
        return [(c[:, :-1], c[:, 1:]) for c in chunk]

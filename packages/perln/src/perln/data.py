"""Token streams for training, evaluation and probing.

The same path serves every scale: ``reprokit.data.text.load_corpus`` (the embedded
standard-library corpus, a local folder, or a streamed Hugging Face dataset) and
``get_tokenizer`` (bytes, or a hub BPE such as GPT-2 / cl100k).

Training batches are a pure function of (seed, global micro-batch index), with the index
``micro_step * world_size + rank``: the batch of step s is the same whether the run went
straight through or was killed and resumed (``--resume`` reproduces an uninterrupted run
exactly), every DDP rank draws its own batches, and 2 ranks at accumulate 1 see exactly the
batches 1 process sees at accumulate 2 (the same global batch, hence the same training).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import IterableDataset

from perln.config import DataConfig
from reprokit.data.text import TokenStream, encode_documents, get_tokenizer, load_corpus
from reprokit.errors import DatasetError


def load_tokens(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(train tokens, validation tokens, tokenizer) for the configured corpus."""
    kwargs: dict = {"val_fraction": cfg.val_fraction}
    if cfg.source == "stdlib":
        kwargs["max_chars"] = cfg.max_chars
    elif cfg.source.startswith("hf:"):
        kwargs.update(max_docs=cfg.max_docs, text_field=cfg.text_field)
    corpus = load_corpus(cfg.source, **kwargs)
    train_docs, val_docs = corpus.train, corpus.validation
    if cfg.val_source:  # evaluate on another corpus (the paper: C4 validation); train on all
        kw: dict = {"val_fraction": 0.5}
        if cfg.val_source.startswith("hf:"):
            kw.update(max_docs=cfg.val_docs, text_field=cfg.text_field, split=cfg.val_split)
        held_out = load_corpus(cfg.val_source, **kw)
        train_docs = corpus.train + corpus.validation
        val_docs = held_out.train + held_out.validation
    tokenizer = get_tokenizer(cfg.tokenizer)
    train = encode_documents(train_docs, tokenizer)
    val = encode_documents(val_docs, tokenizer)
    if train.numel() == 0 or val.numel() == 0:
        raise DatasetError(f"data.source={cfg.source!r} gave an empty train or validation split")
    return train, val, tokenizer


def save_tokens(path: Path, train: torch.Tensor, val: torch.Tensor) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"train": train, "val": val}, tmp)
    tmp.replace(path)


def read_tokens(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.load(path, weights_only=True)
    return data["train"], data["val"]


def _rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StepBatches(IterableDataset):
    """Endless training batches; micro-step m of rank r (of `world`) draws the windows of
    global micro-batch m·world + r, always the same."""

    def __init__(self, stream: TokenStream, batch_size: int, seed: int, start_micro_step: int = 0):
        self.stream, self.batch_size, self.seed = stream, batch_size, seed
        self.start_micro_step = start_micro_step

    def __iter__(self):
        rank, world = _rank()
        step = self.start_micro_step
        generator = torch.Generator()
        while True:
            index = step * world + rank
            generator.manual_seed(((self.seed * 1_000_003 + index) * 4099) % 2**63)
            yield self.stream.batch(self.batch_size, generator)
            step += 1

import pytest
import torch

from reprokit.data.text import (
    ByteTokenizer,
    TokenStream,
    encode_documents,
    load_corpus,
    local_corpus,
    stdlib_corpus,
)
from reprokit.errors import DatasetError, OfflineError


def test_stdlib_corpus_is_deterministic_and_split_without_overlap():
    a = stdlib_corpus(max_chars=600_000)
    b = stdlib_corpus(max_chars=600_000)
    assert a == b
    assert len(a.train) > 10 and len(a.validation) >= 1
    assert not set(a.train) & set(a.validation)
    assert a.n_chars <= 600_000


def test_local_corpus_reads_files_written_here(tmp_path):
    for i in range(20):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}\n")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    corpus = local_corpus([tmp_path])
    texts = set(corpus.train) | set(corpus.validation)
    assert texts == {f"document {i}\n" for i in range(20)}
    assert corpus.validation


def test_empty_or_missing_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(DatasetError, match="no non-empty text"):
        local_corpus([tmp_path])
    with pytest.raises(DatasetError, match="does not exist"):
        load_corpus(str(tmp_path / "nope"))


def test_online_corpus_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(OfflineError, match="Offline alternative: the embedded corpus"):
        load_corpus("hf:HuggingFaceFW/fineweb-edu:sample-10BT")


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "naïve café → ok"
    assert tok.decode(tok.encode(text)) == text
    tokens = encode_documents(["ab", "c"], tok)
    assert tokens.tolist() == list(b"ab\n\nc") and tokens.dtype == torch.uint8


def test_token_stream_windows():
    stream = TokenStream(torch.arange(100, dtype=torch.int32), block_size=8)
    x, y = stream.batch(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 8) and torch.equal(y, x + 1)
    x2, _ = stream.batch(4, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    fixed = stream.fixed_batches(2, 3)
    assert len(fixed) == 3 and fixed[0][0][0, 0] == 0
    assert torch.equal(fixed[1][0], stream.fixed_batches(2, 3)[1][0])
    with pytest.raises(DatasetError, match="fewer than one block"):
        TokenStream(torch.arange(5), block_size=8)


def test_a_single_file_yields_train_and_validation_text(tmp_path):
    lines = [f"line {i}: to be or not to be, that is the question\n" for i in range(2000)]
    path = tmp_path / "shakespeare.txt"
    path.write_text("".join(lines))
    corpus = load_corpus(str(path))
    assert corpus.train and corpus.validation
    # the pieces are the file cut in order, cut at line ends, nothing lost or repeated
    pieces = sorted(corpus.train + corpus.validation, key=lambda t: int(t.split(":")[0][5:]))
    assert "".join(pieces) == path.read_text()
    assert all(p.endswith("\n") for p in pieces)
    assert 0 < sum(map(len, corpus.validation)) < 0.3 * len(path.read_text())
    assert load_corpus(str(path)) == corpus  # the same split every time

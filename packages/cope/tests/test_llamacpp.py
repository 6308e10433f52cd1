"""The llamacpp backend against the real SmolLM2-135M GGUF (a few tokens per call).

Needs the optional runtime (cope[llamacpp], built from the sdist); CI installs it.
"""

import pytest

from cope.backends import SMOLLM2_GGUF
from cope.llamacpp import LlamaCppBackend, gguf_path, llama_cpp_available, sample_seed

pytestmark = pytest.mark.skipif(
    not llama_cpp_available(),
    reason="llama-cpp-python is not installed (optional extra: uv sync --extra llamacpp)")

SMOL = "registry:smollm2-135m-instruct-q4_1"
PROMPTS = ["What is 2 + 3? End with 'Answer: <number>'.",
           [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."}]]


@pytest.fixture(scope="module")
def local():
    backend = LlamaCppBackend(SMOL, workers=0, n_ctx=512)
    yield backend
    backend.close()


def test_generates_a_few_tokens_per_prompt_and_sample(local):
    gens = local.generate(PROMPTS, n=3, temperature=0.8, max_tokens=6, seed=5)
    assert len(gens) == 2
    for g in gens:
        assert len(g.texts) == 3 and len(g.completion_tokens) == 3
        assert all(1 <= c <= 6 for c in g.completion_tokens)
        assert g.prompt_tokens > 5 and g.error is None
    again = local.generate(PROMPTS, n=3, temperature=0.8, max_tokens=6, seed=5)
    assert [g.texts for g in again] == [g.texts for g in gens]  # seeded per sample


def test_greedy_decodes_once_and_stop_strings_cut(local):
    [g] = local.generate(PROMPTS[:1], n=2, temperature=0.0, max_tokens=8)
    assert g.texts[0] == g.texts[1] and g.completion_tokens[0] == g.completion_tokens[1]
    word = g.texts[0].split()[0]
    [cut] = local.generate(PROMPTS[:1], n=1, temperature=0.0, max_tokens=8, stop=[word])
    assert word not in cut.texts[0]


def test_worker_processes_give_the_same_samples(local):
    pooled = LlamaCppBackend(SMOL, workers=2, n_ctx=512)
    try:
        a = pooled.generate(PROMPTS, n=2, temperature=0.8, max_tokens=5, seed=9)
        one = pooled.generate(PROMPTS[:1], n=2, temperature=0.8, max_tokens=5, seed=9)
    finally:
        pooled.close()
    b = local.generate(PROMPTS, n=2, temperature=0.8, max_tokens=5, seed=9)
    assert [g.texts for g in a] == [g.texts for g in b]
    assert one[0].texts == b[0].texts  # split over workers by sample: same texts


def test_specs_resolve_to_the_same_file():
    assert gguf_path(SMOL).read_bytes()[:4] == b"GGUF"
    assert gguf_path(SMOLLM2_GGUF).samefile(gguf_path(SMOL))
    assert sample_seed(1, "p", 0) != sample_seed(1, "p", 1) == sample_seed(1, "p", 1)

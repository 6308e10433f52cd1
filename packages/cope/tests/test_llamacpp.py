"""The llamacpp backend against the real SmolLM2-135M GGUF (a few tokens per call).

Needs the optional runtime (cope[llamacpp], built from the sdist); CI installs it.
The reference for the batched decoder is llama-cpp-python's own one-sequence path,
``Llama.create_chat_completion`` with the same sampling settings and seed.
"""

import pytest

from cope.backends import SMOLLM2_GGUF, as_messages
from cope.llamacpp import LlamaCppBackend, _deal, gguf_path, llama_cpp_available, sample_seed

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


def one_sequence(backend, prompt, max_tokens, temperature=0.0, seed=0):
    """llama-cpp-python's own decoder: one sequence, as the backend did before batching.
    reset(): evaluate the whole prompt afresh. Its prompt cache would evaluate the last
    prompt token alone, and a one-token batch rounds differently from a longer one."""
    backend._local.reset()
    resp = backend._local.create_chat_completion(
        messages=as_messages(prompt), max_tokens=max_tokens, temperature=temperature,
        top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=seed)
    return resp["choices"][0]["message"]["content"], resp["usage"]


def test_generates_a_few_tokens_per_prompt_and_sample(local):
    gens = local.generate(PROMPTS, n=3, temperature=0.8, max_tokens=6, seed=5)
    assert len(gens) == 2
    for g in gens:
        assert len(g.texts) == 3 and len(g.completion_tokens) == 3
        assert all(1 <= c <= 6 for c in g.completion_tokens)
        assert g.prompt_tokens > 5 and g.error is None
    again = local.generate(PROMPTS, n=3, temperature=0.8, max_tokens=6, seed=5)
    assert [g.texts for g in again] == [g.texts for g in gens]  # seeded per sample
    other = local.generate(PROMPTS, n=3, temperature=0.8, max_tokens=6, seed=6)
    assert [g.texts for g in other] != [g.texts for g in gens]


def test_the_saved_prefix_changes_speed_not_texts(local):
    first = local.generate(PROMPTS, n=2, temperature=0.8, max_tokens=6, seed=2)
    # the two chats share their template's opening: its KV state is kept for the next call
    assert local._local._cope_prefixes
    cached = local.generate(PROMPTS, n=2, temperature=0.8, max_tokens=6, seed=2)
    fresh = LlamaCppBackend(SMOL, workers=0, n_ctx=512)  # nothing saved yet
    try:
        cold = fresh.generate(PROMPTS, n=2, temperature=0.8, max_tokens=6, seed=2)
    finally:
        fresh.close()
    assert [g.texts for g in cached] == [g.texts for g in first] == [g.texts for g in cold]


def test_batched_greedy_is_the_one_sequence_decode(local):
    batched = local.generate(PROMPTS, n=1, temperature=0.0, max_tokens=12)
    for prompt, g in zip(PROMPTS, batched):
        [alone] = local.generate([prompt], n=1, temperature=0.0, max_tokens=12)
        text, usage = one_sequence(local, prompt, 12)
        assert g.texts == alone.texts == [text]
        assert g.completion_tokens == [usage["completion_tokens"]]
        assert g.prompt_tokens == usage["prompt_tokens"]  # same chat template, same tokens


def test_a_batched_sample_is_the_one_sequence_sample_with_its_seed(local):
    # The same sampler (temperature, then a draw seeded with the row's seed) as
    # create_chat_completion. Batched logits round differently, which can move a draw
    # (README: 8 of 16 rows on the 1.5B model over 48 tokens); over these 8 tokens of
    # SmolLM2 they all agree, with the one binary the project builds.
    gens = local.generate(PROMPTS, n=2, temperature=0.8, max_tokens=8, seed=3)
    for prompt, g in zip(PROMPTS, gens):
        key = repr(as_messages(prompt))
        for k in range(2):
            text, _ = one_sequence(local, prompt, 8, 0.8, sample_seed(3, key, k))
            assert g.texts[k] == text


def test_greedy_decodes_once_and_stop_strings_cut(local):
    [g] = local.generate(PROMPTS[:1], n=2, temperature=0.0, max_tokens=8)
    assert g.texts[0] == g.texts[1] and g.completion_tokens[0] == g.completion_tokens[1]
    word = g.texts[0].split()[1]
    [cut] = local.generate(PROMPTS[:1], n=1, temperature=0.0, max_tokens=8, stop=[word])
    assert cut.texts[0] == g.texts[0][:g.texts[0].index(word)]
    # the row ended at the token that completed the stop string
    assert cut.completion_tokens[0] < g.completion_tokens[0]


def test_waves_and_the_per_sequence_context():
    small = LlamaCppBackend(SMOL, workers=0, n_ctx=52, max_seqs=2)
    try:
        gens = small.generate(PROMPTS, n=3, temperature=0.8, max_tokens=4, seed=1)  # 3 waves
        assert [len(g.texts) for g in gens] == [3, 3]
        assert all(1 <= c <= 4 for g in gens for c in g.completion_tokens)
        # n_ctx is per sequence, prompt + completion: the completion is cut to fit
        [g] = small.generate(PROMPTS[:1], n=1, temperature=0.0, max_tokens=100)
        assert g.prompt_tokens < 52 and g.prompt_tokens + g.completion_tokens[0] == 52
        with pytest.raises(ValueError, match="n_ctx=52"):
            small.generate(["word " * 60], n=1, max_tokens=2)
    finally:
        small.close()


def test_prompts_longer_than_a_batch_go_in_chunks(local):
    chunked = LlamaCppBackend(SMOL, workers=0, n_ctx=512, n_batch=16)  # prompts: 23, 47
    try:
        for kw in ({"n": 1, "temperature": 0.0}, {"n": 3, "temperature": 0.8, "seed": 4}):
            a = local.generate(PROMPTS * 2, max_tokens=6, **kw)
            b = chunked.generate(PROMPTS * 2, max_tokens=6, **kw)
            assert [g.texts for g in b] == [g.texts for g in a]
            assert [g.completion_tokens for g in b] == [g.completion_tokens for g in a]
            assert b[0].texts == b[2].texts  # a repeated chat draws the same seeds
    finally:
        chunked.close()


def test_worker_processes_give_the_same_samples(local):
    pooled = LlamaCppBackend(SMOL, workers=2, n_ctx=512)
    try:
        a = pooled.generate(PROMPTS, n=2, temperature=0.8, max_tokens=5, seed=9)
        one = pooled.generate(PROMPTS[:1], n=2, temperature=0.8, max_tokens=5, seed=9)
    finally:
        pooled.close()
    # two workers: one prompt each, as a call with that prompt alone in this process
    b = [local.generate([p], n=2, temperature=0.8, max_tokens=5, seed=9)[0] for p in PROMPTS]
    assert [g.texts for g in a] == [g.texts for g in b]
    # one prompt, its samples split over the workers: one sequence per context
    key = repr(as_messages(PROMPTS[0]))
    assert one[0].texts == [one_sequence(local, PROMPTS[0], 5, 0.8, sample_seed(9, key, k))[0]
                            for k in range(2)]


def test_jobs_are_dealt_in_contiguous_balanced_runs():
    assert _deal([4, 4, 4, 4], 2) == [[0, 1], [2, 3]]
    assert _deal([1, 1, 1], 2) == [[0, 1], [2]]
    assert _deal([5, 1, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4, 5]]
    assert _deal([2], 4) == [[0]]
    assert _deal([1, 1], 1) == [[0, 1]]


def test_specs_resolve_to_the_same_file():
    assert gguf_path(SMOL).read_bytes()[:4] == b"GGUF"
    assert gguf_path(SMOLLM2_GGUF).samefile(gguf_path(SMOL))
    assert sample_seed(1, "p", 0) != sample_seed(1, "p", 1) == sample_seed(1, "p", 1)

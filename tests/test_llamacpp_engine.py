"""The llama.cpp engine's primitives on tiny GGUF files written by the tests (CPU, one thread).

Two models: a random Llama (kvopt.engines.llamacpp.tiny.write_tiny_gguf: 4 heads of 32,
2 KV heads) and tests/data/tiny-shakespeare converted to gpt2 with its heads widened
from 16 to 32 (an exact re-parametrisation; 16-wide heads cannot hold a quantized cache).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_llamacpp

pytestmark = needs_llamacpp()

from kvopt.engines.llamacpp.build import build_info, supported_cache_types  # noqa: E402
from kvopt.engines.llamacpp.export import cli_flags, python_snippet  # noqa: E402
from kvopt.engines.llamacpp.gguf_file import read_gguf, unsupported_architecture  # noqa: E402
from kvopt.engines.llamacpp.session import (  # noqa: E402
    REPORT_RESOLUTION_BYTES,
    LlamaBatchSession,
    LlamaCppRefused,
    LlamaSession,
    kv_bytes_formula,
    load_report,
    mean_kl,
    next_token_logits,
    open_model,
)
from kvopt.engines.llamacpp.tiny import write_tiny_gguf, write_trained_gguf  # noqa: E402
from kvopt.errors import ConfigError  # noqa: E402

TEXT = Path(__file__).resolve().parents[1] / "kvopt" / "data" / "coriolanus.txt"
ONE_THREAD = {"n_threads": 1, "n_threads_batch": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trained_gguf(tmp_path_factory.mktemp("gguf") / "shakespeare.gguf")


@pytest.fixture(scope="module")
def trained_narrow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trained_gguf(tmp_path_factory.mktemp("gguf") / "shakespeare16.gguf", head_dim=None)


@pytest.fixture
def session(tiny: Path):
    llm = open_model(tiny, {"type_k": "f16", "type_v": "f16", **ONE_THREAD}, n_ctx=200)
    yield LlamaSession(llm, prompt_tokens=32, new_tokens=16, seed=0)
    llm.close()


# -- GGUF metadata ----------------------------------------------------------------------


def test_read_gguf_fields(tiny: Path, trained: Path, trained_narrow: Path) -> None:
    model = read_gguf(tiny)
    assert (model.architecture, model.layers, model.heads, model.kv_heads) == ("llama", 2, 4, 2)
    assert (model.head_dim, model.head_dim_v, model.embedding, model.context_length) == (32, 32, 128, 2048)
    assert model.vocab_size == 303 and model.file_bytes == tiny.stat().st_size
    gpt2 = read_gguf(trained)
    assert (gpt2.architecture, gpt2.heads, gpt2.kv_heads, gpt2.head_dim, gpt2.embedding) == ("gpt2", 4, 4, 32, 128)
    assert (gpt2.context_length, gpt2.vocab_size) == (256, 1024)
    assert read_gguf(trained_narrow).head_dim == 16  # as trained: 64 wide, 4 heads


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.write_bytes(b"PK\x03\x04 a zip, not a model"), p)[1], "is not a GGUF file"),
        (lambda p: (p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40), p)[1], "unreadable GGUF metadata"),
    ],
    ids=["missing", "bad-magic", "truncated"],
)
def test_bad_gguf_is_a_config_error(tmp_path: Path, make, says: str) -> None:
    path = make(tmp_path / "model.gguf")
    with pytest.raises(ConfigError) as info:
        read_gguf(path)
    (problem,) = info.value.problems
    assert problem.startswith("model.gguf: ") and str(path) in problem and says in problem


def test_unsupported_architecture(tiny: Path, tmp_path: Path) -> None:
    import gguf

    assert unsupported_architecture(read_gguf(tiny)) is None
    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), arch="kvopt-nonesuch")
    for add, value in ((writer.add_block_count, 1), (writer.add_embedding_length, 32), (writer.add_head_count, 1)):
        add(value)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    why = unsupported_architecture(read_gguf(tmp_path / "odd.gguf"))
    assert why is not None and "'kvopt-nonesuch'" in why and "unknown model architecture" in why


# -- the build ----------------------------------------------------------------------------


def test_build_info_reads_the_binding() -> None:
    import llama_cpp

    info = build_info()
    assert info.version == llama_cpp.__version__ and info.system_info
    assert info.cache_types["f16"] == llama_cpp.GGML_TYPE_F16 == 1
    assert (info.cache_types["q8_0"], info.cache_types["q4_0"], info.cache_types["iq4_nl"]) == (8, 2, 20)


def test_supported_cache_types(tiny: Path, trained_narrow: Path) -> None:
    with_fa = supported_cache_types(str(tiny), flash_attn=True, head_dim=read_gguf(tiny).head_dim)
    assert set(with_fa) >= {"f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"}
    assert all(why is None for why in with_fa.values()), with_fa
    without = supported_cache_types(str(tiny), flash_attn=False, head_dim=read_gguf(tiny).head_dim)
    assert without["f16"] is None
    assert without["q8_0"] == "as V: quantized V cache requires flash_attn to be enabled"
    # 16-wide heads: refused with flash attention, silently wrong without (so reported)
    narrow = supported_cache_types(str(trained_narrow), flash_attn=True, head_dim=read_gguf(trained_narrow).head_dim)
    assert "does not divide n_embd_head_k=16" in (narrow["q8_0"] or "")
    narrow = supported_cache_types(str(trained_narrow), flash_attn=False, head_dim=read_gguf(trained_narrow).head_dim)
    assert "16-wide K heads" in (narrow["q4_0"] or "") and narrow["f16"] is None


def test_refused_settings_say_why(tiny: Path) -> None:
    with pytest.raises(LlamaCppRefused, match="requires flash_attn"):
        open_model(tiny, {"type_k": "q8_0", "type_v": "q8_0", "flash_attn": False, **ONE_THREAD}, n_ctx=64)
    with pytest.raises(ValueError, match="allowed: f32, f16"):
        open_model(tiny, {"type_k": "q3_k"}, n_ctx=64)


# -- timing -------------------------------------------------------------------------------


def test_call_times_prefill_and_decode(session: LlamaSession) -> None:
    result = session.call()
    assert result.ttft_ms > 0 and result.decode_tok_s > 0
    assert (result.new_tokens, result.cut_by_deadline, result.batch) == (16, False, 1)
    assert session.prefill_ms() > 0
    cut = session.call(new_tokens=100, deadline_s=0.0)  # past its deadline at the first token
    assert cut.cut_by_deadline and cut.new_tokens == 1


def test_window_reruns_from_the_same_context(session: LlamaSession) -> None:
    import llama_cpp

    llm = session.llm
    memory = llama_cpp.llama_get_memory(llm.ctx)
    assert session.fill_window(100) > 0
    ends = []
    for _ in range(2):
        steps = session.window(8)
        assert len(steps) == 8 and all(s > 0 for s in steps)
        # the previous window's entries were removed: the cache ends at context + steps - 1 again
        assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == 100 + 8 - 1
        ends.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy())
    np.testing.assert_array_equal(ends[0], ends[1])  # same context, same steps: the same last logits


@pytest.mark.parametrize(("cache", "expected"), [("f16", 1_048_576), ("q8_0", 557_056)])
def test_kv_bytes_match_the_formula(tiny: Path, cache: str, expected: int) -> None:
    # 2048 cells x 2 layers x (2 KV heads x 32) values, for K and for V: f16 2 bytes a
    # value; q8_0 34 bytes a block of 32. llama.cpp prints MiB to 0.01, so its report is
    # compared within half that step for each of K and V.
    settings = {"type_k": cache, "type_v": cache, "flash_attn": True, **ONE_THREAD}
    llm = open_model(tiny, settings, n_ctx=2048)
    try:
        report = load_report(llm)
        assert kv_bytes_formula(read_gguf(tiny), llm.n_ctx(), cache, cache) == expected
        assert report.kv_types == (cache, cache)
        assert abs(report.kv_k_bytes - expected // 2) <= REPORT_RESOLUTION_BYTES
        assert abs(report.kv_v_bytes - expected // 2) <= REPORT_RESOLUTION_BYTES
        session = LlamaSession(llm, prompt_tokens=8, new_tokens=4)
        assert session.kv_bytes() == expected
        memory = session.memory()
        assert memory.kv_bytes == report.kv_bytes and memory.weights_bytes > 0 and memory.compute_bytes > 0
        parts = memory.weights_bytes + report.kv_buffer_bytes + memory.compute_bytes + memory.output_bytes
        assert memory.accounted_bytes == parts and memory.peak_rss_bytes >= 0 and memory.rss_method
    finally:
        llm.close()


def test_batched_sequences_match_single_ones(tiny: Path) -> None:
    llm = open_model(tiny, {"type_k": "f16", "type_v": "f16", "n_batch": 64, **ONE_THREAD}, n_ctx=100)
    try:
        with LlamaBatchSession(llm, batch=3, prompt_tokens=70, new_tokens=12) as batch:
            result = batch.call()
            assert (result.batch, result.new_tokens) == (3, 12) and result.ttft_ms > 0 and result.decode_tok_s > 0
            per_sequence = kv_bytes_formula(read_gguf(tiny), 256, "f16", "f16")
            assert abs(batch.kv_bytes() - 3 * per_sequence) <= 2 * REPORT_RESOLUTION_BYTES
            for prompt, made in zip(batch.prompts, batch.generated):
                assert next_token_logits(llm, prompt, 12)[0] == made  # same greedy tokens as alone
    finally:
        llm.close()


# -- fidelity -----------------------------------------------------------------------------


def test_next_token_logits_free_and_forced(tiny: Path) -> None:
    llm = open_model(tiny, {"type_k": "f16", "type_v": "f16", **ONE_THREAD}, n_ctx=64)
    try:
        prompt = LlamaSession(llm, 16, 8).prompt
        free_tokens, free = next_token_logits(llm, prompt, 8)
        assert len(free_tokens) == 8 and free.shape == (8, llm.n_vocab())
        other = [(t + 1) % llm.n_vocab() for t in free_tokens]
        forced_tokens, forced = next_token_logits(llm, prompt, 8, forced=other)
        assert forced_tokens == other and forced.shape == free.shape
        np.testing.assert_array_equal(forced[0], free[0])  # step 0 sees only the prompt
        assert not np.array_equal(forced[1:], free[1:])
        _, again = next_token_logits(llm, prompt, 8, forced=free_tokens)
        np.testing.assert_array_equal(again, free)  # forcing the greedy tokens is the free run
    finally:
        llm.close()


def _forced_logits(path: Path, cache: str, text_ids: list[int]) -> np.ndarray:
    llm = open_model(path, {"type_k": cache, "type_v": cache, "flash_attn": True, **ONE_THREAD}, n_ctx=224)
    try:
        return next_token_logits(llm, text_ids[:64], 160, forced=text_ids[64:224])[1]
    finally:
        llm.close()


def test_trained_model_conversion_and_cache_fidelity(trained: Path, trained_narrow: Path) -> None:
    llm = open_model(trained, {**ONE_THREAD}, n_ctx=224)
    ids = llm.tokenize(TEXT.read_text(encoding="utf-8")[:4000].encode(), add_bos=False)[:224]
    llm.close()
    assert len(ids) == 224
    base = _forced_logits(trained, "f16", ids)
    # widening the heads is exact: the 16-wide original gives the same logits
    np.testing.assert_allclose(_forced_logits(trained_narrow, "f16", ids), base, atol=5e-3)
    # Measured (this build, CPU): mean KL vs the f16 cache over 160 teacher-forced steps of
    # Coriolanus: q8_0 ~1e-6 nats, q4_0 ~1.1e-4 (about 100x more).
    kl_q8 = mean_kl(base, _forced_logits(trained, "q8_0", ids))
    kl_q4 = mean_kl(base, _forced_logits(trained, "q4_0", ids))
    assert 0 < kl_q8 < 1e-5 and kl_q4 > 10 * kl_q8, (kl_q8, kl_q4)


# -- export -------------------------------------------------------------------------------


def test_python_snippet_runs_without_kvopt(tiny: Path, tmp_path: Path) -> None:
    settings = {"type_k": "q8_0", "type_v": "q4_0", "flash_attn": True, "n_batch": 64, "n_ubatch": 32, **ONE_THREAD}
    script = python_snippet(tiny, settings, n_ctx=300)
    assert "import kvopt" not in script and "from kvopt" not in script
    assert "type_k=llama_cpp.GGML_TYPE_Q8_0," in script and "n_ctx=512," in script
    run = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    made = int(run.stdout.split("completion_tokens")[-1])
    assert made > 0


def test_cli_flags() -> None:
    settings = {
        "type_k": "q8_0",
        "type_v": "q8_0",
        "flash_attn": True,
        "n_batch": 512,
        "n_ubatch": 512,
        "n_threads": 2,
        "n_threads_batch": 2,
        "n_gpu_layers": 99,
        "offload_kqv": False,
    }
    assert cli_flags(settings) == "-ctk q8_0 -ctv q8_0 -fa on -b 512 -ub 512 -t 2 -tb 2 -ngl 99 -nkvo"
    # the binding's defaults written out where llama.cpp's tools default otherwise
    assert cli_flags({}, n_ctx=300) == "-c 512 -fa off -b 512 -ngl 0"
    with pytest.raises(ValueError, match=r"unknown llama\.cpp settings"):
        cli_flags({"cache": "q8_0"})

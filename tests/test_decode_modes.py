"""The compiled decode mode's loop on CPU: torch.compile's graph capture (aot_eager backend: no
compiler toolchain, no CUDA graphs) must give eager's tokens with three graphs per grid, and
the rooflines' byte and FLOP counts must match independent counts. CUDA-graph replays and their
timing are measured on the GPU (docs/PERFORMANCE.md)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

from gcompress_bench import models
from gcompress_bench.config import resolve
from gcompress_bench.measure import roofline
from gcompress_bench.measure.timing import Clock
from gcompress_bench.suites import infer

from .conftest import smollm2


@pytest.fixture(scope="module")
def lm():
    return models.load(models.resolve("smollm2-135m", resolve({})["models"]), "float32", torch.device("cpu"))


@pytest.mark.system
def test_compiled_decode_gives_eager_tokens_with_three_graphs_per_grid():
    lm = smollm2("float32", layers=2)   # graphs per grid do not depend on depth; a compile costs ~2/30 of the model's
    torch._dynamo.reset()   # a grid as a fresh session sees it: no shapes marked dynamic by earlier tests
    clock = Clock("cpu")
    graphs = []
    for batch, ctx in [(1, 12), (1, 20), (2, 9), (2, 15)]:
        kw = dict(lm=lm, clock=clock, batch=batch, ctx=ctx, gen=5, warmup=0, iters=1, trials=1, seed=batch)
        compiled = infer.decode(mode="compiled", backend="aot_eager", **kw)
        eager = infer.decode(**kw)
        assert compiled["first_tokens"] == eager["first_tokens"]
        assert compiled["kv_bytes_per_position"] == eager["kv_bytes_per_position"] == 2 * 2 * 3 * 64 * 4
        assert compiled["kv_cache_bytes"] == 2 * 2 * 3 * 64 * 4 * batch * (ctx + 5)   # static: ctx + gen slots
        assert eager["compile"] is None and len(compiled["samples_ms"]["step"][0]) == 4
        assert compiled["compile"]["graph_cache"] == {"hits": 0, "misses": 0}   # aot_eager has no graph cache
        graphs.append(compiled["compile"]["graphs_compiled"])
    assert graphs == [1, 1, 1, 0]   # static, then dynamic in the cache length, then in the batch; then reused


def test_decode_weight_bytes_skip_an_untied_input_embedding(lm):
    # SmolLM2 ties its embedding: lm_head reads it, so a step reads every parameter, counted once
    assert models.weight_bytes(lm.model, decode_step=True) == models.weight_bytes(lm.model) == 134_515_008 * 4
    cfg = models._config_from_file(models.REPO_ROOT / "data/models/llama3-8b-instruct.config.json")
    cfg.num_hidden_layers = 1
    with torch.device("meta"):
        untied = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336 + 2 * 4096
    assert models.weight_bytes(untied, decode_step=True) == 2 * (layer + 4096 + 128256 * 4096)
    assert models.weight_bytes(untied) == 2 * (layer + 4096 + 2 * 128256 * 4096)


def test_prefill_flops_match_torch_flop_counter(lm):
    """With eager attention FlopCounterMode sees every matmul, the full S x S attention square
    included; ours halves the square for causal attention, so the two differ by exactly that half."""
    lm.model.set_attn_implementation("eager")   # SDPA's fused CPU kernel is invisible to the counter
    try:
        for batch, seq in [(1, 16), (2, 24)]:
            ids = infer.random_ids(49152, batch, seq, 0, "cpu")
            with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            half_square = 2 * batch * 30 * 9 * 64 * seq ** 2
            assert roofline.prefill_flops(lm.model, batch, seq) == counter.get_total_flops() - half_square
    finally:
        lm.model.set_attn_implementation("sdpa")


def test_ceilings_are_measured_on_the_device():
    c = roofline.measure_ceilings("cpu", torch.float32)
    assert c["copy_GBps"] > 0.5 and c["gemm_TFLOPs"] > 0.001 and c["dtype"] == "float32"
    assert c["method"] == ("median of 5: copy of 64 MiB (read + write counted), 1024x1024 @ 1024x1024 matmul in float32; "
                           "best of 5 x 20000 one-element in-place adds, host clock, one sync each")


COMPILE_ONCE = """
import json, torch
from gcompress_bench.suites import infer
where = infer.use_compile_cache()
torch.compile(lambda x: torch.sin(x) * 2 + 1)(torch.randn(8))
print(json.dumps({**where, **infer._graph_cache()}))
"""


def _compile_once(cache_root):
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(GCOMPRESS_CACHE=str(cache_root), PYTHONPATH=str(models.REPO_ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", COMPILE_ONCE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.system
def test_compiled_graphs_are_cached_in_the_suites_cache_unless_the_environment_chose_a_folder(tmp_path, monkeypatch):
    """Inductor (on CPU, its C++ backend) compiles a graph into <GCOMPRESS_CACHE>/torch-compile, and a second
    process loads it from there instead of compiling; a TORCHINDUCTOR_CACHE_DIR of the user's own is kept, and
    torch's own /tmp default (which torch sets when dynamo is imported) is replaced."""
    suite = tmp_path / "cache" / "torch-compile"
    assert _compile_once(tmp_path / "cache") == {"dir": str(suite), "set_by": "suite", "hits": 0, "misses": 1}
    assert (suite / "fxgraph").is_dir()
    assert _compile_once(tmp_path / "cache") == {"dir": str(suite), "set_by": "suite", "hits": 1, "misses": 0}
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setattr(infer, "CACHE_ROOT", tmp_path / "cache")
    own = tmp_path / "own"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(own))
    assert infer.use_compile_cache() == {"dir": str(own), "set_by": "environment"}
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(own)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert infer.use_compile_cache() == {"dir": str(suite), "set_by": "suite"}
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(suite)

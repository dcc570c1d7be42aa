"""ASVD on the embedded real model (SmolLM2-135M) and on its parts, against independent computations."""
import copy

import numpy as np
import pytest
import torch

from gcompress_bench import models
from gcompress_bench.config import resolve
from gcompress_bench.methods import asvd
from gcompress_bench.methods.asvd import lowrank as asvd_lowrank
from gcompress_bench.suites.ppl import perplexity

from .conftest import REPO, smollm2


@pytest.mark.parametrize("shape", [(96, 40), (40, 96)])
def test_factors_are_the_truncated_svd_of_the_scaled_weight(shape):
    """B A equals numpy's rank-r truncation of W diag(s), unscaled; at full rank it is W itself."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(*shape, generator=g, dtype=torch.float64)
    s = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.1
    U, sig, Vt = np.linalg.svd((W * s).numpy(), full_matrices=False)
    for r in (5, 17, min(shape)):
        B, A = asvd_lowrank.factorize(W, s, r)
        assert (B.shape, A.shape) == ((shape[0], r), (r, shape[1]))
        want = (U[:, :r] * sig[:r]) @ Vt[:r] / s.numpy()
        np.testing.assert_allclose((B @ A).numpy(), want, atol=1e-9)
        np.testing.assert_allclose(asvd_lowrank.spectrum(W, s).numpy(), sig, rtol=1e-9)
    assert torch.allclose(B @ A, W, atol=1e-10)


def test_ranks_meet_the_parameter_budget_and_rounding():
    shapes = {f"m{i}": (256 + 64 * i, 384) for i in range(4)}
    spectra = {n: torch.linspace(1, 0.01, min(s), dtype=torch.float64) ** (1 + i)
               for i, (n, s) in enumerate(shapes.items())}
    total = sum(o * i for o, i in shapes.values())
    for ratio in (0.5, 0.7):
        ranks, tau = asvd_lowrank.allocate(spectra, shapes, ratio)
        kept = sum(o * i if ranks[n] is None else ranks[n] * (o + i) for n, (o, i) in shapes.items())
        assert kept <= ratio * total and 0 < tau < 1
        assert all(r is None or r < asvd_lowrank.dense_above(*shapes[n]) for n, r in ranks.items())
    ranks, _ = asvd_lowrank.allocate(spectra, shapes, 0.5)
    assert len({r for r in ranks.values()}) > 1   # steeper spectra keep less rank: irregular
    assert asvd_lowrank.allocate(spectra, shapes, 1.0) == (dict.fromkeys(shapes), 0.0)   # nothing to save: all dense


@pytest.fixture(scope="module")
def smol():
    cfg = resolve({})
    return models.load(models.resolve("smollm2-135m", cfg["models"]), "float32", torch.device("cpu")), cfg


def _compress(smol, ratio, policy="none"):
    lm0, cfg = smol
    lm = copy.copy(lm0)
    lm.model = copy.deepcopy(lm0.model)
    m = asvd.Asvd()
    opts = {**cfg["asvd"], "ratio": ratio, "align_policy": policy, "calib_samples": 4}
    return lm, m.apply(lm, m.plan(opts, lm.spec, lm.tokenizer), opts, progress=lambda line: None)


@pytest.mark.system
def test_ratio_one_reproduces_the_logits_and_perplexity_degrades_monotonically(smol):
    ids = smol[0].tokenizer((REPO / "data/tiny_corpus.txt").read_text(), return_tensors="pt").input_ids[0][:1024]
    probe = ids[None, :128]
    with torch.inference_mode():
        ref = smol[0].model(input_ids=probe).logits
    ppl = {}
    for ratio in (1.0, 0.95, 0.9):
        lm, facts = _compress(smol, ratio)
        assert facts["params_kept_ratio"] <= ratio
        with torch.inference_mode():
            if ratio == 1.0:
                assert facts["factored"] == 0 and torch.equal(lm.model(input_ids=probe).logits, ref)
        ppl[ratio] = perplexity(lm.model, ids, 256)["ppl"]
    assert ppl[1.0] < ppl[0.95] < ppl[0.9], ppl


@pytest.mark.system
def test_facts_list_every_module_and_its_alignment():
    smol = smollm2("float32", layers=2), resolve({})   # every module kind, at 2/30 of the compression cost
    lm, facts = _compress(smol, 0.95)
    assert len(facts["modules"]) == 2 * 7
    ranks = {n: m["rank"] for n, m in facts["modules"].items() if m["rank"] is not None}
    for name, r in ranks.items():   # the model holds what the facts say
        mod = lm.model.get_submodule(name)
        assert (mod.A.weight.shape[0], mod.B.weight.shape[1]) == (r, r)
    for a in (8, 16, 32, 64):
        assert facts["aligned_share"][str(a)] == sum(r % a == 0 for r in ranks.values()) / len(ranks)
    assert facts["aligned_share"]["8"] < 0.5
    _, rounded = _compress(smol, 0.95, "round:32")
    assert rounded["aligned_share"] == {"8": 1.0, "16": 1.0, "32": 1.0, "64": rounded["aligned_share"]["64"]}
    # nearest multiples: the parameter count moves with them, and the alignment facts say by how much
    al = rounded["alignment"]
    assert rounded["params_kept_ratio"] == pytest.approx(0.95, abs=0.005)
    assert al["within_budget"] == (al["params_kept"] <= al["params_budget"])

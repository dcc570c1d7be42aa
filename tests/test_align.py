"""Alignment policies and the budget knapsack, against brute force and hand-computed cases."""
import copy
import itertools
import random

import numpy as np
import pytest
import torch

from gcompress_bench import UsageError, dimtable, methods
from gcompress_bench.config import resolve
from gcompress_bench.methods import align

from .conftest import REPO, run_cli, smollm2


def brute_force(items, budget):
    best = None
    for pick in itertools.product(*(range(len(o)) for o in items)):
        cost = sum(items[i][j][0] for i, j in enumerate(pick))
        value = sum(items[i][j][1] for i, j in enumerate(pick))
        if cost <= budget and (best is None or value > best[0] + 1e-12):
            best = (value, pick)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_matches_brute_force_on_small_cases(seed):
    rng = random.Random(seed)
    items = [[(rng.randint(1, 30), rng.random() * 10) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 5))]
    budget = rng.randint(min(c for o in items for c, _ in o) * len(items), 30 * len(items))
    want = brute_force(items, budget)
    if want is None:
        with pytest.raises(ValueError, match="no choice of dims fits the budget"):
            align.knapsack(items, budget)
        return
    pick = align.knapsack(items, budget)
    assert sum(items[i][j][0] for i, j in enumerate(pick)) <= budget
    assert sum(items[i][j][1] for i, j in enumerate(pick)) == pytest.approx(want[0])


@pytest.mark.parametrize("seed", range(10))
def test_knapsack_with_a_coarse_unit_never_exceeds_the_budget(seed):
    """Budgets far above the DP's resolution round costs up: feasible, and close to the exact optimum."""
    rng = random.Random(seed)
    items = [[(rng.randint(1000, 90000), rng.random()) for _ in range(3)] for _ in range(4)]
    budget = sum(min(c for c, _ in o) for o in items) + rng.randint(0, 100000)
    pick = align.knapsack(items, budget, states=50)
    assert sum(items[i][j][0] for i, j in enumerate(pick)) <= budget
    assert sum(items[i][j][1] for i, j in enumerate(pick)) <= brute_force(items, budget)[0] + 1e-12


def _series(points, M=1, **shape):
    return {"op": "lowrank", "sweep": "r", "shape": {"d_in": 64, **shape}, "M": M,
            "points": [{"value": v, "p50_ms": ms, "p99_ms": ms, "kernels": [f"k{v % 8 == 0}"]} for v, ms in points]}


# latency 1.0 ms on multiples of 8, 1.3 ms elsewhere, rising slowly with the dim
TABLE = {"device_name": "cpu: test", "dtype": "float32", "model": "x", "run_id": "t", "path": "t",
         "series": [_series([(v, (1.0 if v % 8 == 0 else 1.3) + v / 1000) for v in range(16, 65)], M=m)
                    for m in (1, 64)]}


def test_fast_values_and_the_inferred_alignment():
    assert align.fast_values(TABLE["series"][0]) == set(range(16, 65, 8))
    assert align.inferred_alignment(TABLE) == 8
    slow16 = {**TABLE, "series": [_series([(v, 2.0 if v % 16 else 1.0) for v in range(16, 65)])]}
    assert align.inferred_alignment(slow16) == 16


def _modules(n=4, full=64, unit=10, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        energy = np.sort(rng.random(full))[::-1] ** (1 + i)
        gains = np.concatenate([[0.0], np.cumsum(energy) / energy.sum()])
        out.append(align.Module(f"m{i}", int(rng.integers(20, 60)), full, unit, gains, {"op": "lowrank", "sweep": "r",
                                                                                          "d_in": 64}))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_budget_picks_fast_dims_within_the_unaligned_budget(seed):
    mods = _modules(seed=seed)
    dims = align.apply(align.Policy("budget", table=TABLE, text="budget:t"), mods)
    facts = align.facts(align.Policy("budget", table=TABLE, text="budget:t"), mods, dims)
    assert facts["params_kept"] <= facts["params_budget"] == sum(m.logical * m.unit_params for m in mods)
    assert facts["within_budget"] and all(d["physical"] % 8 == 0 == d["kept"] % 8 for d in dims.values())
    # the knapsack's choice against brute force over the same candidates
    cands = [align.candidates(TABLE, m)[0] for m in mods]
    items = [[(d * m.unit_params, float(m.gains[d])) for d in ds] for m, ds in zip(mods, cands)]
    best = brute_force(items, facts["params_budget"])[0]
    assert sum(float(m.gains[dims[m.name]["kept"]]) for m in mods) == pytest.approx(best)
    pred = facts["predicted_ms"]["M=1"]
    assert pred["modules"] == 4 and pred["physical_ms"] < pred["logical_ms"] or all(m.logical % 8 == 0 for m in mods)


def test_budget_outside_the_table_falls_back_to_its_alignment():
    m = align.Module("wide", 203, 300, 5, np.linspace(0, 1, 301), {"op": "lowrank", "sweep": "r", "d_in": 64})
    cands, source = align.candidates(TABLE, m)
    assert source == "multiples of 8 (alignment inferred from the table)"
    assert cands == list(range(152, 249, 8))   # multiples of 8 within 25% of 203 (a reach of round(50.75) = 51)
    assert align.apply(align.Policy("budget", table=TABLE, text="b"), [m])["wide"]["kept"] == 200


def test_round_pad_none():
    m = align.Module("a", 358, 512, 1, None)
    assert align.apply(align.parse("none"), [m])["a"] == {"logical": 358, "kept": 358, "physical": 358,
                                                          "policy": "none", "expected": None}
    assert align.apply(align.parse("round:32"), [m])["a"]["kept"] == 352
    assert align.apply(align.parse("pad:32"), [m])["a"] == {"logical": 358, "kept": 358, "physical": 384,
                                                            "policy": "pad:32", "expected": None}
    assert align.rounded(20, 32, 512) == 32 and align.rounded(500, 32, 510) == 480 and align.rounded(20, 32, 24) == 24


@pytest.mark.parametrize("text, message", [
    ("round", "--align-policy: 'round' is not allowed; N must be an integer from 1 to 1024 (no kernel tile is wider); "
              "allowed: " + align.ALLOWED),
    ("pad:x", "--align-policy: 'pad:x' is not allowed; N must be an integer from 1 to 1024 (no kernel tile is wider); "
              "allowed: " + align.ALLOWED),
    ("round:²", "--align-policy: 'round:²' is not allowed; N must be an integer from 1 to 1024 (no kernel tile is "
                "wider); allowed: " + align.ALLOWED),
    ("pad:1000000000", "--align-policy: 'pad:1000000000' is not allowed; N must be an integer from 1 to 1024 (no "
                       "kernel tile is wider); allowed: " + align.ALLOWED),
    ("budget:", "--align-policy: unknown value 'budget:'; allowed: " + align.ALLOWED),
    ("fast", "--align-policy: unknown value 'fast'; allowed: " + align.ALLOWED),
])
def test_bad_policies_are_one_line(text, message):
    with pytest.raises(UsageError) as e:
        align.parse(text)
    assert str(e.value) == message


# ---------------------------------------------------------------- each policy on each method (SmolLM2, CPU)

H200_TABLE = REPO / "data/evidence/h200/alignment/dims"   # a real sweep: its lowrank and gemm curves name the fast dims


@pytest.fixture(scope="module")
def smol():
    """SmolLM2's first two layers: every projection kind and its dims, at 2/30 of the compression cost."""
    return smollm2("float32", layers=2), resolve({})


def _apply(smol, name, policy, **opts):
    lm0, cfg = smol
    lm = copy.copy(lm0)
    lm.model = copy.deepcopy(lm0.model)
    m = methods.get(name)
    o = {**methods.options_for({**cfg, "align_policy": policy}, m), "calib_samples": 2, "calib_seq_len": 256, **opts}
    return lm, m.apply(lm, m.plan(o, lm.spec, lm.tokenizer), o, progress=lambda line: None)


def _dims(name, facts):
    """(logical, kept, physical) per shaped module, as each method's facts give them."""
    if name == "palu":
        return [t for m in facts["modules"].values() for t in zip(m["logical"], m["kept"], m["physical"])]
    if name == "asvd":
        return [(m["logical"], m["rank"], m["physical"]) for m in facts["modules"].values() if m["rank"] is not None]
    return [(m["logical"], m["kept"], m["physical"]) for m in facts["modules"].values()]


PARAMS = {"palu": {"ratio": 0.7}, "asvd": {"ratio": 0.95}, "prune": {"ratio": 0.9}}


@pytest.mark.system
@pytest.mark.parametrize("name", ["palu", "asvd", "prune"])
def test_each_policy_on_each_method(smol, name):
    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(1))
    out = {}
    for policy in ("none", "round:32", "pad:32", f"budget:{H200_TABLE}"):
        lm, facts = _apply(smol, name, policy, **PARAMS[name])
        dims, al = _dims(name, facts), facts["alignment"]
        with torch.inference_mode():
            out[policy] = (lm.model(input_ids=ids).logits, dims, al)
        assert al["policy"] == policy and al["modules"] == len(dims)
        if policy == "none":
            assert all(lg == k == p for lg, k, p in dims) and any(p % 8 for _, _, p in dims)   # irregular as chosen
        if policy == "round:32":
            # the nearest multiple of 32, or the largest one under the module's full dim where that is above it
            assert all(k == p and p % 32 == 0 and (abs(p - lg) <= 16 or p < lg) for lg, k, p in dims)
        if policy == "pad:32":
            assert all(lg == k and p == -(-k // 32) * 32 for lg, k, p in dims)
            assert al["params_kept"] == al["params_budget"] < al["params_physical"]
        if policy.startswith("budget"):
            # never over the unaligned budget; the table's curves (lowrank fast at multiples of 32, gemm at 8)
            # decide the dims of modules it does not cover; each stays within 25% of its own
            assert al["within_budget"] and al["params_kept"] <= al["params_budget"]
            step = 8 if name == "prune" else 32
            assert all(k == p and p % step == 0 and abs(k - lg) <= round(lg * align.WINDOW) for lg, k, p in dims)
            assert al["table"]["device_name"] == "NVIDIA H200"
    none, pad = out["none"], out["pad:32"]
    assert [d[:2] for d in none[1]] == [d[:2] for d in pad[1]]
    torch.testing.assert_close(pad[0], none[0], rtol=1e-4, atol=1e-3)   # zeros change shapes, not outputs
    assert not torch.allclose(out["round:32"][0], none[0])


def test_a_timing_run_refuses_a_table_from_another_device(tmp_path):
    proc = run_cli("gcompress_bench.llm_run", "--variant", "palu", "--align-policy", f"budget:{H200_TABLE}",
                   "--out", str(tmp_path), "--check-only")
    here = dimtable.device_name("cpu")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"gcompress-bench: dims table: a table measured on 'NVIDIA H200' is not applied on '{here}'; allowed: a "
        "table measured on this device")
    assert not any(tmp_path.iterdir())

"""PaLU on the embedded real model (SmolLM2-135M: 3 KV heads of 64, so gs 1 or 3) and on configs."""
import copy
import json
import re

import pytest
import torch

from gcompress_bench import UsageError, methods, models
from gcompress_bench.config import resolve
from gcompress_bench.methods import align, calibration, palu
from gcompress_bench.methods.palu import factors as palu_factors
from gcompress_bench.suites.ppl import perplexity

from .conftest import REPO

LLAMA3 = models._config_from_file(REPO / "data/models/llama3-8b-instruct.config.json")


def pcfg(**kw):
    cfg = resolve({})
    opts = {**cfg["palu"], **kw}
    return {**methods.options_for({**cfg, "palu": opts}, palu.Palu()), "calib_samples": 4, "calib_seq_len": 256, **kw}


@pytest.fixture(scope="module")
def smol():
    cfg = resolve({})
    spec = models.resolve("smollm2-135m", cfg["models"])
    return models.load(spec, "float32", torch.device("cpu"))


def compressed(smol, **kw):
    lm = copy.copy(smol)
    lm.model = copy.deepcopy(smol.model)
    p = pcfg(**kw)
    return lm, palu_factors.compress(lm, palu.Palu().plan(p, lm.spec, lm.tokenizer), p)


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


PROBE = torch.randint(0, 49152, (2, 48), generator=torch.Generator().manual_seed(3))


def test_uniform_ranks_then_palu_rounding_as_the_default_policy():
    r = palu_factors.uniform_ranks(LLAMA3, 0.7, 4)
    assert len(r) == 64 and set(map(tuple, r.values())) == {(358, 358)}   # 0.7 * 512 = 358.4
    assert palu.Palu().default_align({"ranks": None}) == "round:32" and palu.Palu().default_align({"ranks": "f"}) == "none"
    assert [align.rounded(358, 32, 512), align.rounded(round(0.05 * 512), 32, 512), align.rounded(90, 32, 128)] == \
        [352, 32, 96]   # PaLU's rule: 358.4 -> 352, at least one multiple, 89.6 -> 96
    assert palu_factors.uniform_ranks(LLAMA3, 1.0, 8)["model.layers.0.self_attn.v_proj"] == [1024]
    assert palu_factors.uniform_ranks(LLAMA3, 0.7, 1)["model.layers.0.self_attn.k_proj"] == [90] * 8
    facts = palu_factors.summarize_ranks({k: {"logical": v, "kept": [352, 352], "physical": [352, 352]}
                                  for k, v in r.items()}, LLAMA3, 4, 128)
    assert facts["kv_compression_logical"] == pytest.approx(1 - 352 / 512)
    assert facts["aligned_share"] == {"8": 1.0, "16": 1.0, "32": 1.0, "64": 0.0}


@pytest.mark.parametrize("gs, message", [
    (2, "--palu-group-size: 2 does not divide smollm2-135m's 3 KV heads and 9 attention heads; allowed: 1, 3"),
    (4, "--palu-group-size: 4 does not divide smollm2-135m's 3 KV heads and 9 attention heads; allowed: 1, 3"),
])
def test_group_size_must_divide_heads(smol, gs, message):
    with pytest.raises(UsageError) as e:
        palu_factors.allocate(pcfg(group_size=gs), smol.spec.config, "smollm2-135m", "x")
    assert str(e.value) == message


def _rank_file(tmp_path, ranks, name="ranks.json", dumped=True):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model_type": "palullama", "head_wise_ranks": ranks} if dumped else ranks))
    return path


def test_rank_files_palu_dump_and_plain(tmp_path):
    ranks = {p: [32 + i, 512 - i] for i, p in enumerate(palu_factors.module_paths(LLAMA3))}
    for dumped in (True, False):
        path = _rank_file(tmp_path, ranks, f"{dumped}.json", dumped)
        got, info = palu_factors.allocate(pcfg(ranks=str(path), group_size=4), LLAMA3, "m", "m")
        assert got == ranks and info == {"source": "rank_file", "path": str(path)}


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("model.layers.0.self_attn.v_proj"), "must map each of the 60 k_proj/v_proj modules"),
    (lambda r: r.__setitem__("model.layers.0.self_attn.k_proj", [128, 64]), "has [128, 64]; allowed: a list of 1 ranks"),
    (lambda r: r.__setitem__("model.layers.2.self_attn.k_proj", [193]), "rank 193 is not allowed; allowed: integers 1..192"),
    (lambda r: r.__setitem__("model.layers.2.self_attn.k_proj", [0]), "rank 0 is not allowed; allowed: integers 1..192"),
])
def test_malformed_rank_files(smol, tmp_path, mutate, message):
    ranks = palu_factors.uniform_ranks(smol.spec.config, 0.7, 3)
    mutate(ranks)
    with pytest.raises(UsageError, match=r"^--palu-ranks: .*" + re.escape(message)):
        palu_factors.allocate(pcfg(ranks=str(_rank_file(tmp_path, ranks))), smol.spec.config, "smollm2-135m", "x")


def test_missing_and_broken_rank_file(smol, tmp_path):
    with pytest.raises(UsageError, match=r"^--palu-ranks: rank file .*/nope.json does not exist$"):
        palu_factors.allocate(pcfg(ranks=str(tmp_path / "nope.json")), smol.spec.config, "smollm2-135m", "x")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"^--palu-ranks: .*/bad.json is not valid JSON"):
        palu_factors.allocate(pcfg(ranks=str(tmp_path / "bad.json")), smol.spec.config, "smollm2-135m", "x")


def test_ratio_dir_resolver_picks_the_match_and_records_candidates(tmp_path):
    ranks = palu_factors.uniform_ranks(LLAMA3, 0.7, 4)
    tree = tmp_path / "palu" / "outputs"
    names = ["Meta-Llama-3-8B-Instruct_ratio-0.5_gs-4-fisher_uniform-whiten",
             "Meta-Llama-3-8B-Instruct_ratio-0.7_gs-1-fisher_uniform-whiten",
             "Meta-Llama-3-8B-Instruct_ratio-0.7_gs-4-fisher_uniform-plain",
             "Meta-Llama-3-8B-Instruct_ratio-0.7_gs-4-fisher_uniform-whiten",
             "Mistral-7B-Instruct-v0.2_ratio-0.7_gs-4-fisher_uniform-whiten"]
    for n in names:
        _rank_file(tree / n, ranks, "config.json")
    got, info = palu_factors.allocate(pcfg(ranks=str(tmp_path / "palu"), group_size=4), LLAMA3, "llama3-8b-shape",
                              "Meta-Llama-3-8B-Instruct")
    assert info["chosen"].endswith(names[3]) and len(info["candidates"]) == 5 and got == ranks
    with pytest.raises(UsageError, match=r"no PaLU output under .* matches model Meta-Llama-3-8B-Instruct, "
                                         r"ratio 0.6, gs 4; found: .*ratio-0.5_gs-4"):
        palu_factors.allocate(pcfg(ranks=str(tmp_path / "palu"), ratio=0.6, group_size=4), LLAMA3, "m",
                      "Meta-Llama-3-8B-Instruct")


@pytest.mark.system
@pytest.mark.parametrize("svd", ["whiten", "plain"])
def test_ratio_one_reproduces_the_baseline(smol, svd):
    lm, facts = compressed(smol, ratio=1.0, svd=svd)
    assert facts["kv_compression_logical"] == 0
    ref, got = logits(smol.model, PROBE), logits(lm.model, PROBE)
    assert torch.linalg.norm(got - ref) / torch.linalg.norm(ref) < 1e-4


@pytest.mark.system
def test_alignment_padding_changes_shapes_not_logits(smol):
    lm1, f1 = compressed(smol, ratio=0.5, align_policy="none")
    lm64, f64 = compressed(smol, ratio=0.5, align_policy="pad:64")
    mod = "model.layers.0.self_attn.k_proj"
    assert f1["modules"][mod]["logical"] == f64["modules"][mod]["kept"] == f64["modules"][mod]["logical"] == [96]
    assert f64["modules"][mod]["physical"] == [128] and f1["modules"][mod]["physical"] == [96]
    assert lm64.model.model.layers[0].self_attn.k_proj.VT.weight.shape == (128, 576)
    assert f64["aligned_share"]["64"] == 1.0 and f1["aligned_share"]["64"] == 0.0
    a, b = logits(lm1.model, PROBE), logits(lm64.model, PROBE)
    assert torch.linalg.norm(a - b) / torch.linalg.norm(a) < 1e-5


@pytest.mark.system
def test_whitened_beats_plain_on_activation_weighted_error(smol):
    ids, _ = calibration.windows(smol.tokenizer, smol.spec.config, pcfg(), "palu")
    grams = palu_factors.gram_matrices(smol, ids)
    for i in (0, 10, 29):
        S, _ = palu_factors.cholesky_factor(grams[i])
        W = smol.model.model.layers[i].self_attn.k_proj.weight.double()
        errs = {}
        for mode, s in (("whiten", S), ("plain", None)):
            B, A = palu_factors.factorize(W, 128, s)
            errs[mode] = palu_factors.activation_error(W, B @ A, S)
        assert errs["whiten"] < errs["plain"], (i, errs)


@pytest.mark.system
def test_quality_on_the_embedded_model_degrades_gradually(smol):
    """Bound: at ratio 0.7 (KV cut by a third, rank 128 of 192) whitened PaLU keeps perplexity on the
    evaluation corpus within 1.5x of the baseline. Measured here 1.2x; plain SVD, which the notes say
    ruins this model, is far past it. The bound leaves room for CPU/BLAS differences, not for breakage."""
    ids = smol.tokenizer((REPO / "data/tiny_corpus.txt").read_text(), return_tensors="pt").input_ids[0][:2048]
    base = perplexity(smol.model, ids, 512)["ppl"]
    ppl = {}
    for ratio in (0.9, 0.7, 0.5):
        lm, _ = compressed(smol, ratio=ratio, align_policy="none")
        ppl[ratio] = perplexity(lm.model, ids, 512)["ppl"]
    assert base < ppl[0.9] < ppl[0.7] < ppl[0.5], (base, ppl)
    assert ppl[0.7] / base < 1.5, (base, ppl)


def _write_palu_dump(lm, facts, folder, origin):
    """A ratio dir as PaLU's compress.py writes one: save_pretrained of the compressed model, then
    model_type, architectures, head_wise_ranks and original_model_name_or_path in its config.json."""
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="palullama", architectures=["PaluLlamaForCausalLM"], original_model_name_or_path=origin,
               head_wise_ranks={m: v["logical"] for m, v in facts["modules"].items()})
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def palu_dump(smol, tmp_path_factory):
    lm, facts = compressed(smol, ratio=0.5, align_policy="none")    # irregular ranks: 96 of 192
    folder = tmp_path_factory.mktemp("palu") / "SmolLM2-135M-Instruct_ratio-0.5_gs-3-fisher_uniform-whiten"
    return _write_palu_dump(lm, facts, folder, "HuggingFaceTB/SmolLM2-135M-Instruct"), logits(lm.model, PROBE)


@pytest.mark.system
def test_a_palu_dump_loads_its_own_factors(smol, palu_dump):
    folder, want = palu_dump
    assert palu_factors.dump_weight_files(folder) == [folder / "model.safetensors"]
    lm, facts = compressed(smol, ratio=0.5, ranks=str(folder))
    assert facts["factors"] == f"loaded from {folder}" and facts["calibration"] is None
    assert facts["rank_info"]["factors_from"] == {"dir": str(folder), "files": ["model.safetensors"]}
    assert torch.equal(logits(lm.model, PROBE), want)
    # the ratio dir resolver finds the same dump by name and loads it too
    lm, facts = compressed(smol, ratio=0.5, ranks=str(folder.parent))
    assert facts["factors"] == f"loaded from {folder}" and torch.equal(logits(lm.model, PROBE), want)
    # recompute: PaLU's ranks, the suite's own whitened factors
    lm, facts = compressed(smol, ratio=0.5, ranks=str(folder), factors="recompute")
    assert facts["factors"] == "recomputed (whiten)" and facts["calibration"]["windows"] == 4
    assert facts["modules"]["model.layers.0.self_attn.k_proj"]["logical"] == [96]


@pytest.mark.system
def test_a_dump_that_disagrees_is_refused_naming_what(smol, palu_dump, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder, _ = palu_dump
    bad = tmp_path / folder.name
    shutil.copytree(folder, bad)
    tensors = load_file(bad / "model.safetensors")
    name = "model.layers.3.self_attn.v_proj.VT.weight"
    tensors[name] = tensors[name][:95].clone()
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UsageError) as e:
        palu_factors.allocate(pcfg(ratio=0.5, ranks=str(bad)), smol.spec.config, "smollm2-135m", "SmolLM2-135M-Instruct")
    assert str(e.value) == (f"--palu-ranks: {bad}: {name} has shape [95, 576]; allowed: [96, 576] (ranks [96] of its "
                            "config, hidden 576, group size 3 x head_dim 64) - the dump disagrees with its ranks or "
                            "the model")
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "original_model_name_or_path": "meta-llama/Llama-2-7b-hf"}))
    with pytest.raises(UsageError, match=r"^--palu-ranks: .*/other was made from 'meta-llama/Llama-2-7b-hf' "
                                         r"\(original_model_name_or_path\), not from SmolLM2-135M-Instruct; allowed"):
        palu_factors.allocate(pcfg(ratio=0.5, ranks=str(other)), smol.spec.config, "smollm2-135m", "SmolLM2-135M-Instruct")
    # recomputing needs only the ranks, so the same dirs are accepted with --palu-factors recompute
    ranks, info = palu_factors.allocate(pcfg(ratio=0.5, ranks=str(bad), factors="recompute"), smol.spec.config,
                                "smollm2-135m", "SmolLM2-135M-Instruct")
    assert "factors_from" not in info and ranks["model.layers.3.self_attn.v_proj"] == [96]


def test_headline_names_effective_compression():
    """gs 1 at ratio 0.9 on SmolLM2 rounds every rank to 64 of 64: no compression, and the run must say so."""
    cfg = models.resolve("smollm2-135m", resolve({})["models"]).config
    def facts(ratio, gs, rounding):
        ranks = {k: [align.rounded(r, rounding, gs * 64) for r in v] for k, v in palu_factors.uniform_ranks(cfg, ratio, gs).items()}
        f = palu_factors.summarize_ranks({k: {"logical": v, "kept": v, "physical": v} for k, v in ranks.items()}, cfg, gs, 64)
        return {**f, "ratio": ratio}
    assert palu.headline(facts(0.9, 1, 32)) == ("WARNING: no compression at all: every rank is full; requested ratio "
                                                "0.9 (KV cut 0.1000); effective KV cut 0.0000 (ranks kept 1.0000, mean "
                                                "rank 64.0 of 64)")
    assert palu.headline(facts(0.6, 1, 32)).startswith("WARNING: the effective compression differs from the "
                                                       "requested ratio; requested ratio 0.6 (KV cut 0.4000); effective "
                                                       "KV cut 0.5000")
    assert palu.headline(facts(0.7, 3, 32)) == ("requested ratio 0.7 (KV cut 0.3000); effective KV cut 0.3333 (ranks "
                                                "kept 0.6667, mean rank 128.0 of 192)")


def test_a_mismatched_dump_stops_the_run_at_session_start(tmp_path):
    """Exit 2 with the one line, before any weights load and with no run dir."""
    from safetensors.torch import save_file

    from .conftest import run_cli

    dump = tmp_path / "SmolLM2-135M-Instruct_ratio-0.7_gs-3-fisher_uniform-whiten"
    dump.mkdir()
    ranks = {p: [128] for p in palu_factors.module_paths(models.resolve("smollm2-135m", resolve({})["models"]).config)}
    (dump / "config.json").write_text(json.dumps({"model_type": "palullama", "head_wise_ranks": ranks,
                                                  "original_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    save_file({"model.layers.0.self_attn.k_proj.VT.weight": torch.zeros(127, 576)}, dump / "model.safetensors")
    proc = run_cli("gcompress_bench.llm_eval", "--variant", "palu", "--suite", "ppl", "--palu-ranks", str(dump),
                   "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert (f"--palu-ranks: {dump}: model.layers.0.self_attn.k_proj.VT.weight has shape [127, 576]; allowed: "
            "[128, 576]") in proc.stdout + proc.stderr
    assert not (tmp_path / "r").exists()

"""Structured pruning (prune.py) on tiny random Llamas and on the embedded real model (SmolLM2-135M),
against independent computations."""
import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from gcompress_bench import UsageError, models
from gcompress_bench.config import resolve
from gcompress_bench.methods import align, prune
from gcompress_bench.methods.prune import taylor as prune_taylor

OPTS = {"ratio": 0.85, "heads": 0.0, "calib": "auto", "calib_samples": 3, "calib_seq_len": 24, "align_policy": "none"}


def tiny(layers=2, inter=40, seed=0, dtype=torch.float64):
    """A random LlamaForCausalLM with GQA (4 query heads on 2 KV heads), wrapped as the suite loads models."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    spec = SimpleNamespace(name="tiny", config=cfg, synthetic=True)
    return models.LoadedModel(spec, model, None, torch.device("cpu"), dtype, 0.0)


def compress(lm, **opts):
    m, opts = prune.Prune(), {**OPTS, **opts}
    return m.apply(lm, m.plan(opts, lm.spec, lm.tokenizer), opts, progress=lambda line: None)


def clone(lm):
    out = copy.copy(lm)
    out.model = copy.deepcopy(lm.model)
    return out


def masked_scores(model, ids):
    """The same scores by another route: multiply down_proj's input by a ones mask per channel and o_proj's
    input by a ones mask per KV group; dL/dmask = sum over tokens of h * dL/dh."""
    cfg = model.config
    rep_width = cfg.num_attention_heads // cfg.num_key_value_heads * cfg.head_dim
    ch = [torch.ones(cfg.intermediate_size, dtype=torch.float64, requires_grad=True) for _ in model.model.layers]
    gr = [torch.ones(cfg.num_key_value_heads, dtype=torch.float64, requires_grad=True) for _ in model.model.layers]
    hooks = []
    for layer, c, g in zip(model.model.layers, ch, gr):
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a, c=c: (a[0] * c,)))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda _m, a, g=g: (a[0] * g.repeat_interleave(rep_width),)))
    total = [0] * (2 * len(ch))
    for row in ids:
        grads = torch.autograd.grad(model(input_ids=row[None], labels=row[None]).loss, ch + gr)
        total = [t + d for t, d in zip(total, grads)]
    for h in hooks:
        h.remove()
    return torch.stack(total[:len(ch)]).abs(), torch.stack(total[len(ch):]).abs()


def test_taylor_scores_equal_the_gradient_of_a_unit_mask():
    lm = tiny()
    ids = torch.randint(0, 64, (3, 24), generator=torch.Generator().manual_seed(1))
    flags = [p.requires_grad for p in lm.model.parameters()]
    channels, groups = prune_taylor.taylor_scores(lm.model, ids)
    assert channels.shape == (2, 40) and groups.shape == (2, 2)
    want_c, want_g = masked_scores(lm.model, ids)
    torch.testing.assert_close(channels.double(), want_c, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(groups.double(), want_g, rtol=1e-5, atol=1e-9)
    assert [p.requires_grad for p in lm.model.parameters()] == flags   # the weights' flags are restored
    assert all(not layer.mlp.down_proj._forward_pre_hooks for layer in lm.model.model.layers)


def test_taylor_score_predicts_the_loss_change_of_zeroing_a_channel():
    """First order: zeroing channel j moves the loss by about -(signed score); the ranking agrees."""
    lm = tiny(layers=1, inter=24, seed=3)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(2))
    channels, _ = prune_taylor.taylor_scores(lm.model, ids)

    def loss(drop=None):
        with torch.no_grad():
            mlp = lm.model.model.layers[0].mlp
            saved = mlp.down_proj.weight.clone()
            if drop is not None:
                mlp.down_proj.weight[:, drop] = 0
            out = sum(lm.model(input_ids=row[None], labels=row[None]).loss for row in ids)
            mlp.down_proj.weight.copy_(saved)
            return out.item()
    base = loss()
    actual = torch.tensor([abs(loss(j) - base) for j in range(24)])
    rank = lambda t: t.argsort().argsort().double()
    corr = torch.corrcoef(torch.stack([rank(actual), rank(channels[0].double())]))[0, 1].item()
    assert corr > 0.9, corr


def test_channel_and_group_allocation():
    scores = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [9, 9, 9, 9, 9, 9]])
    assert prune_taylor.allocate_channels(scores, 10) == [3, 1, 6]          # each layer's best, then the top ones
    assert prune_taylor.allocate_channels(scores, 0) == [1, 1, 1]          # never below one channel a layer
    assert prune_taylor.allocate_channels(scores, 100) == [6, 6, 6]        # never above the full width
    groups = torch.tensor([[0.1, 0.2, 5.0], [0.01, 0.02, 0.03], [1.0, 2.0, 3.0]])
    keep = prune_taylor.select_groups(groups, 0.45)                        # round(0.45 * 9) = 4 removed
    assert keep.tolist() == [[False, False, True], [False, False, True], [True, True, True]]
    keep = prune_taylor.select_groups(groups, 0.99)                        # all but one per layer, at most
    assert keep.sum(1).tolist() == [1, 1, 1] and keep[:, 2].all()
    assert prune_taylor.select_groups(groups, 0.0).all()


def test_head_groups_removed_equal_their_o_proj_columns_zeroed_and_generate_runs():
    lm = tiny(seed=5)
    masked = clone(lm)
    facts = compress(lm, ratio=1.0, heads=0.5)
    kept = [m["kv_heads_kept"] for m in facts["modules"].values()]
    assert [len(k) for k in kept] == [1, 1] and facts["kv_heads_removed"] == 2
    assert facts["params_kept_ratio"] <= 1.0 and facts["width_min"] == facts["width_max"] == 40   # MLPs untouched
    with torch.no_grad():
        for layer, keep in zip(masked.model.model.layers, kept):
            for g in set(range(2)) - set(keep):
                layer.self_attn.o_proj.weight[:, g * 16:(g + 1) * 16] = 0   # 2 query heads x head_dim 8
    attn = lm.model.model.layers[0].self_attn
    shapes = (attn.q_proj.weight.shape, attn.k_proj.weight.shape, attn.o_proj.weight.shape)
    assert shapes == ((16, 32), (8, 32), (32, 16))
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, masked.model(input_ids=ids).logits,
                                   rtol=0, atol=1e-12)
        cache = DynamicCache(config=lm.model.config)
        out = lm.model(input_ids=ids, use_cache=True, cache=cache)
        assert out.past_key_values.layers[0].keys.shape == (2, 1, 12, 8)   # one KV head cached
        step = lm.model(input_ids=ids[:, :1], use_cache=True, cache=out.past_key_values).logits
        full = masked.model(input_ids=torch.cat([ids, ids[:, :1]], 1)).logits[:, -1:]
        torch.testing.assert_close(step, full, rtol=0, atol=1e-12)
    gen = lm.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(gen, masked.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0))
    assert gen.shape == (2, 18)


def test_pad_policy_keeps_the_logits_of_the_same_kept_widths():
    lm = tiny(layers=4, inter=100, seed=7)
    padded = clone(lm)
    plain = compress(lm, ratio=0.6)
    facts = compress(padded, ratio=0.6, align_policy="pad:16")
    kept = {n: m["kept"] for n, m in plain["modules"].items()}
    assert {n: m["kept"] for n, m in facts["modules"].items()} == kept
    assert all(m["physical"] % 16 == 0 and m["kept"] <= m["physical"] < m["kept"] + 16 and m["policy"] == "pad:16"
               for m in facts["modules"].values())
    assert len(set(kept.values())) > 1 and facts["params_kept"] == plain["params_kept"] < facts["params_physical"]
    for name, m in facts["modules"].items():
        assert padded.model.get_submodule(name).down_proj.weight.shape == (32, m["physical"])
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(padded.model(input_ids=ids).logits, lm.model(input_ids=ids).logits,
                                   rtol=0, atol=1e-12)


def test_plan_refuses_bad_options():
    lm = tiny()
    with pytest.raises(UsageError) as e:
        prune.Prune().plan({**OPTS, "heads": 1.0}, lm.spec, None)
    assert str(e.value) == "--prune-heads: 1.0 is not allowed; it must be in [0, 1)"
    with pytest.raises(UsageError) as want:
        align.parse("pad:x")
    with pytest.raises(UsageError) as e:   # before any weight loads: the policy's own line
        prune.Prune().plan({**OPTS, "align_policy": "pad:x"}, lm.spec, None)
    assert str(e.value) == str(want.value) and str(e.value).startswith("--align-policy: 'pad:x'")
    before_session = {k: v for k, v in OPTS.items() if k != "align_policy"}   # no policy injected: none
    assert prune.Prune().plan(before_session, lm.spec, None).policy.kind == "none"


@pytest.fixture(scope="module")
def smol():
    cfg = resolve({})
    return models.load(models.resolve("smollm2-135m", cfg["models"]), "float32", torch.device("cpu"))


@pytest.mark.system
def test_ratio_one_reproduces_the_logits(smol):
    lm = clone(smol)
    probe = smol.tokenizer("The quick brown fox jumps over the lazy dog. " * 8, return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = smol.model(input_ids=probe).logits
    facts = compress(lm, ratio=1.0, calib_samples=1, calib_seq_len=64)
    assert facts["params_kept_ratio"] == 1.0 and facts["width_min"] == 1536 and facts["kv_heads_removed"] == 0
    assert facts["verification"]["top1_agreement"] == 1.0
    with torch.inference_mode():
        assert torch.equal(lm.model(input_ids=probe).logits, ref)


@pytest.mark.system
def test_kept_parameters_stay_within_the_ratio_and_widths_are_irregular(smol):
    lm = clone(smol)
    facts = compress(lm, ratio=0.85, heads=0.1, calib_samples=2, calib_seq_len=128)
    assert facts["params_kept_ratio"] <= 0.85 and facts["params_kept"] == facts["params_physical"]
    widths = [m["kept"] for m in facts["modules"].values()]
    assert len(facts["modules"]) == 30 and len(set(widths)) > 10 and max(widths) <= 1536
    assert facts["kv_heads_removed"] == 9 and all(1 <= len(m["kv_heads_kept"]) <= 3 for m in facts["modules"].values())
    for name, m in facts["modules"].items():   # the model holds what the facts say
        layer = lm.model.get_submodule(name.removesuffix(".mlp"))
        assert layer.mlp.gate_proj.weight.shape == (m["kept"], 576)
        assert layer.self_attn.k_proj.weight.shape == (64 * len(m["kv_heads_kept"]), 576)
        assert layer.self_attn.q_proj.weight.shape == (3 * 64 * len(m["kv_heads_kept"]), 576)
    assert facts["aligned_share"]["8"] == sum(w % 8 == 0 for w in widths) / 30
    assert facts["verification"]["finite_logits"] and facts["verification"]["top1_agreement"] > 0.4
    assert prune.headline(facts) == (f"requested 0.85 of the parameters kept; kept {facts['params_kept_ratio']:.4f} "
                                     f"(MLP widths {min(widths)}..{max(widths)} of 1536, "
                                     f"{facts['aligned_share']['8']:.0%} aligned to 8; 9 of 90 KV heads removed)")
    rows = [line for line in prune.Prune().markdown(facts) if line.startswith("| model.layers.")]
    m0 = facts["modules"]["model.layers.0.mlp"]
    heads0 = "all" if len(m0["kv_heads_kept"]) == 3 else str(m0["kv_heads_kept"])
    assert len(rows) == 30
    assert rows[0] == f"| model.layers.0.mlp | {m0['logical']} | {m0['kept']} | {m0['physical']} | {heads0} |"

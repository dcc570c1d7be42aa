"""ppl and lmeval on the embedded model, checked against independent computations."""
import hashlib
import json
import math

import pytest
import torch

from gcompress_bench import models
from gcompress_bench.config import resolve
from gcompress_bench.results.stats import mcnemar_exact
from gcompress_bench.suites import lmeval
from gcompress_bench.suites.ppl import evaluate as ppl_evaluate
from gcompress_bench.suites.ppl import windows

from .conftest import REPO


@pytest.fixture(scope="module")
def smol():
    return models.load(models.resolve("smollm2-135m", resolve({})["models"]), "float32", torch.device("cpu"))


def test_windows_cover_every_token_once():
    assert windows(10, 4) == [(0, 4, 1), (4, 8, 1), (8, 10, 1)]
    slide = windows(10, 4, stride=2)
    assert slide[0] == (0, 4, 1) and slide[1] == (2, 6, 2) and slide[-1][1] == 10
    scored = [b + i for b, e, first in slide for i in range(first, e - b)]
    assert scored == list(range(1, 10))


@pytest.mark.system
def test_perplexity_matches_a_direct_loop(smol, tmp_path):
    text = (REPO / "data/tiny_corpus.txt").read_text()[:6000]
    corpus = tmp_path / "c.txt"
    corpus.write_text(text)
    got = ppl_evaluate(smol, str(corpus), 256, None)
    ids = smol.tokenizer(text, return_tensors="pt").input_ids[0]
    nll, n = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), 256):      # HF's own loss, token-weighted
            chunk = ids[start:start + 256][None]
            if chunk.shape[1] < 2:
                break
            nll += smol.model(input_ids=chunk, labels=chunk).loss.item() * (chunk.shape[1] - 1)
            n += chunk.shape[1] - 1
    assert got["tokens"] == n and got["windows"] == math.ceil(len(ids) / 256)
    assert got["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert got["dataset"] == str(corpus) and len(got["sha256"]) == 64


def test_fallback_corpus_and_tasks_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from gcompress_bench.corpus import load_corpus
    text, source = load_corpus("auto")
    assert source == "data/tiny_corpus.txt (FALLBACK: WikiText-2 not in the HF cache)"
    assert text == (REPO / "data/tiny_corpus.txt").read_text()
    tasks = lmeval.resolve_tasks(["piqa", "hellaswag"])
    assert tasks["piqa"].spec["task"] == "mini_piqa" and tasks["hellaswag"].spec["task"] == "mini_hellaswag"
    assert tasks["piqa"].source.startswith("FALLBACK: baber/piqa is not in the local HF datasets cache; ran mini_piqa")
    assert tasks["piqa"].provenance["files"] == {
        str(REPO / f"data/tasks/mini_piqa.{ext}"): hashlib.sha256((REPO / f"data/tasks/mini_piqa.{ext}").read_bytes(
        )).hexdigest() for ext in ("yaml", "jsonl")}


def test_mini_tasks_are_balanced_and_large_enough():
    for name, choices in (("mini_piqa", 2), ("mini_hellaswag", 4)):
        rows = [json.loads(line) for line in (REPO / f"data/tasks/{name}.jsonl").read_text().splitlines()]
        labels = [r["label"] for r in rows]
        assert len(rows) >= 100 and {labels.count(k) for k in range(choices)} == {len(rows) // choices}


@pytest.mark.system
def test_lmeval_through_the_real_harness_matches_direct_logliks(smol, tmp_path):
    """A user task YAML two folders down (indexed recursively, as lm-eval does) pointing at local files,
    scored by lm-eval on every item (--limit all); each item's log-likelihoods are recomputed here
    directly from the model."""
    rows = [json.loads(line) for line in (REPO / "data/tasks/mini_piqa.jsonl").read_text().splitlines()[:6]]
    nested = tmp_path / "suite" / "physical"
    nested.mkdir(parents=True)
    (nested / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml_text = (REPO / "data/tasks/mini_piqa.yaml").read_text().replace("mini_piqa.jsonl", "items.jsonl")
    (nested / "my_piqa.yaml").write_text(yaml_text.replace("task: mini_piqa", "task: my_piqa"))
    task = lmeval.resolve_tasks(["my_piqa"], str(tmp_path))["my_piqa"]
    assert task.source == str(nested / "my_piqa.yaml")
    rec = lmeval.evaluate(smol, task, fewshot=0, limit=None, batch_size=4)
    assert rec["n"] == rec["n_available"] == 6 and rec["split"] == "test"
    assert rec["data"]["files"] == {str(nested / f): hashlib.sha256((nested / f).read_bytes()).hexdigest()
                                    for f in ("my_piqa.yaml", "items.jsonl")}
    docs = [{k: r[k] for k in ("goal", "sol1", "sol2", "label")} for r in rows]
    assert rec["data"]["docs_sha256"] == hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest()
    assert rec["acc"] == pytest.approx(sum(int(max(range(2), key=i["loglik"].__getitem__) == i["target"])
                                           for i in rec["items"]) / 6)
    for item in rec["items"][:2]:
        row = rows[item["doc_id"]]
        ctx = smol.tokenizer(f"Question: {row['goal']}\nAnswer:").input_ids
        for k, sol in enumerate((row["sol1"], row["sol2"])):
            whole = smol.tokenizer(f"Question: {row['goal']}\nAnswer: {sol}").input_ids
            with torch.inference_mode():
                logp = torch.log_softmax(smol.model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
            direct = sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))
            assert item["loglik"][k] == pytest.approx(direct, abs=1e-3)


@pytest.mark.system
def test_a_task_that_reports_acc_alone_is_recorded_and_tabled_without_acc_norm(smol, tmp_path):
    """winogrande and mmlu list only acc: their cells hold acc and no acc_norm, in the record and in the tables."""
    text = (REPO / "data/tasks/mini_piqa.yaml").read_text().replace("task: mini_piqa", "task: acc_only")
    text = text.replace("mini_piqa.jsonl", str(REPO / "data/tasks/mini_piqa.jsonl"))
    (tmp_path / "acc_only.yaml").write_text(text[:text.index("  - metric: acc_norm")])
    task = lmeval.resolve_tasks(["acc_only"], str(tmp_path))["acc_only"]
    rec = lmeval.evaluate(smol, task, fewshot=0, limit=4, batch_size=4)
    assert "acc_norm" not in rec and all(set(i) == {"doc_id", "target", "loglik", "acc"} for i in rec["items"])
    assert rec["acc"] == sum(int(max(range(2), key=i["loglik"].__getitem__) == i["target"]) for i in rec["items"]) / 4
    assert lmeval.metrics(rec) is lmeval.ACC
    row = "\n".join(lmeval.Lmeval().markdown({}, [("test_lmeval[acc_only-0shot]", {**rec, "status": "ok"})]))
    assert f"| test_lmeval[acc_only-0shot] | ok | {rec['acc']:.4f} ± {rec['acc_stderr']:.4f} | — | 4 of 120 |" in row


@pytest.mark.parametrize("b, c", [(0, 10), (3, 9), (5, 5), (1, 0), (0, 0)])
def test_mcnemar_exact_against_scipy(b, c):
    from scipy.stats import binomtest
    base = [1] * b + [0] * c + [1, 0] * 3
    other = [0] * b + [1] * c + [1, 0] * 3
    got = mcnemar_exact(base, other)
    assert got[:2] == (b, c)
    assert got[2] == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0)
    assert mcnemar_exact([1] * 10 + [0] * 0, [0] * 10)[2] == pytest.approx(2 / 1024)


@pytest.mark.system
@pytest.mark.parametrize("suite", ["ppl", "lmeval"])
def test_llm_eval_cli_both_variants_with_paired_comparison(quick_group, suite):
    g = quick_group / "g"
    summary = json.loads((g / f"palu-{suite}" / "summary.json").read_text())
    md = (g / f"palu-{suite}" / "run_summary.md").read_text()
    assert summary["iterations"] is None and "iterations" not in md and "prefill" not in md
    assert not (g / f"palu-{suite}" / "plots").exists()
    assert md.splitlines()[4].startswith("- palu: requested ratio 0.7 (KV cut 0.3000); effective KV cut 0.3333")
    assert summary["paired"]["baseline_run"] == str(g / f"baseline-{suite}")
    (cell, paired), = summary["paired"]["cells"].items()
    if suite == "ppl":
        assert paired["same_windows"] and paired["ppl_ratio"] > 1
    else:
        assert paired["n_paired"] == 6 and 0 <= paired["acc"]["mcnemar_p"] <= 1
        assert summary["cells"][cell]["source"].startswith("FALLBACK")

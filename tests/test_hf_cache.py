"""The night's real inputs, offline: an HF cache filled by the real clients from the Hub stand-in,
read by the suite with no fallback, and checked against independent computations."""
import hashlib
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from gcompress_bench import config, models

from .conftest import REPO, run_cli, wikitext_text

pytestmark = pytest.mark.system
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def offline_python(home, code):
    """Run `code` in a fresh interpreter reading only the stand-in's cache; its last stdout line is JSON."""
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_real_clients_filled_the_cache_with_the_datasets_lm_eval_reads(standin_hf_home):
    got = offline_python(standin_hf_home, """
import json
from datasets import load_dataset
from gcompress_bench.suites import lmeval
out = {}
for path, name in [("Salesforce/wikitext", "wikitext-2-raw-v1"), lmeval.builtin_dataset("piqa"),
                   lmeval.builtin_dataset("hellaswag")]:
    ds = load_dataset(path, name)
    out[path] = {split: [len(d), {k: repr(v) for k, v in d.features.items()}, d[0]] for split, d in ds.items()}
print(json.dumps(out))
""")
    assert set(got) == {"Salesforce/wikitext", "baber/piqa", "Rowan/hellaswag"}   # the last two from lm-eval's YAMLs
    wiki = got["Salesforce/wikitext"]
    assert set(wiki) == {"train", "validation", "test"} and wiki["test"][1] == {"text": "Value('string')"}
    assert re.fullmatch(r" = [^=].* = \n", wiki["test"][2]["text"])   # an article title row, as WikiText stores it
    piqa, hs = got["baber/piqa"], got["Rowan/hellaswag"]
    for ds in (piqa, hs):
        assert {s: ds[s][0] for s in ds} == {"train": 100, "validation": 220, "test": 40}
    assert piqa["validation"][1]["label"] == "ClassLabel(names=['0', '1'])" and piqa["test"][2]["label"] == -1
    assert hs["validation"][1]["label"] == "Value('string')" and hs["validation"][1]["endings"] == "List(Value('string'))"
    assert hs["validation"][1]["ind"] == "Value('int32')" and hs["test"][2]["label"] == ""
    assert set(hs["validation"][2]) == {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id",
                                       "split", "split_type", "label"}
    # the stand-in answered every request the clients needed; its only 404s are the probes for files a
    # parquet dataset repo does not have (a loading script, .huggingface.yaml, dataset_infos.json)
    log = (standin_hf_home.parent / "standin-requests.log").read_text()
    missing = re.findall(r"answered 404 \w+: (\S+) is not in", log)
    assert missing and all(m.endswith(".py") or m in (".huggingface.yaml", "dataset_infos.json") for m in missing)
    assert "snapshots" in str(next((standin_hf_home / "hub").rglob("model.safetensors")))
    # populate stopped its server by PID and left nothing of it behind
    # (its port file is in this cache: another test process may be serving a cache of its own)
    assert subprocess.run(["pgrep", "-f", f"hub_standin.py serve --port-file {standin_hf_home}/"],
                          capture_output=True).returncode == 1
    assert not list(standin_hf_home.glob(".standin-port-*"))


def test_populating_a_file_is_one_line_and_touches_nothing(tmp_path):
    (tmp_path / "f").write_text("mine")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "hub_standin.py"), "populate", "--hf-home",
                           str(tmp_path / "f")], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr.splitlines()) == (2, "", [
        f"hub_standin: --hf-home: '{tmp_path / 'f'}' is not a folder; allowed: a folder (made if missing)"])
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_text() == "mine"


def test_the_hf_id_is_the_embedded_model(standin_hf_home):
    """Same weights as the smollm2-135m shortcut, read from the HF cache by its id."""
    got = offline_python(standin_hf_home, f"""
import json, torch
from gcompress_bench import config, models
reg = config.load_suites()["models"]
a = models.load(models.resolve({HF_ID!r}, reg), "float32", torch.device("cpu"))
b = models.load(models.resolve("smollm2-135m", reg), "float32", torch.device("cpu"))
ids = b.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
with torch.inference_mode():
    la, lb = a.model(input_ids=ids).logits, b.model(input_ids=ids).logits
print(json.dumps({{"equal": torch.equal(la, lb), "same_ids": a.tokenizer(
    "The capital of France is Paris, and the capital of Italy is").input_ids == ids[0].tolist(),
    "revision": a.spec.revision, "path": a.spec.path}}))
""")
    assert got["equal"] and got["same_ids"] and re.fullmatch(r"[0-9a-f]{40}", got["revision"])
    assert got["path"].endswith(f"snapshots/{got['revision']}")


def test_ppl_reads_wikitext2_test_from_the_cache(standin_hf_home, tmp_path):
    proc = run_cli("gcompress_bench.llm_eval", "--variant", "baseline", "--suite", "ppl", "--model", HF_ID, "--profile",
                   "quick", "--out", str(tmp_path), "--run-id", "ppl", env_extra={"HF_HOME": str(standin_hf_home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = json.loads((tmp_path / "default/ppl/raw.json").read_text())["cells"]["test_ppl[S512]"]
    assert re.fullmatch(r"Salesforce/wikitext wikitext-2-raw-v1 test \(HF datasets cache, revision [0-9a-f]{40}\)",
                        rec["dataset"])
    text = wikitext_text("test")
    assert rec["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    lm = models.load(models.resolve("smollm2-135m", config.resolve({})["models"]), "float32", torch.device("cpu"))
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[0]
    nll, n = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), 512):      # HF's own loss, token-weighted, non-overlapping windows
            chunk = ids[start:start + 512][None]
            if chunk.shape[1] > 1:
                nll += lm.model(input_ids=chunk, labels=chunk).loss.item() * (chunk.shape[1] - 1)
                n += chunk.shape[1] - 1
    assert rec["tokens"] == n and rec["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert "FALLBACK" not in (tmp_path / "default/ppl/run_summary.md").read_text()


def test_check_only_names_every_input_and_writes_nothing(standin_hf_home, tmp_path):
    args = ["--variant", "palu", "--suite", "lmeval", "--model", HF_ID, "--palu-group-size", "3", "--out",
            str(tmp_path / "r"), "--check-only"]
    proc = run_cli("gcompress_bench.llm_eval", *args, env_extra={"HF_HOME": str(standin_hf_home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gcompress-bench check: lmeval piqa: baber/piqa (HF datasets cache, revision" in proc.stdout
    assert "gcompress-bench check: palu calibration: Salesforce/wikitext wikitext-2-raw-v1 train" in proc.stdout
    assert "gcompress-bench check: every input found; nothing was run or written" in proc.stdout
    assert not (tmp_path / "r").exists()
    # the same check against an HF cache without the datasets: exit 1, each fallback named
    # and on an empty suite cache: the packaged model is read for the check, and nothing is stored
    bare = run_cli("gcompress_bench.llm_eval", *args[:5], "smollm2-135m", *args[6:],
                   env_extra={"HF_HOME": str(tmp_path / "empty"), "GCOMPRESS_CACHE": str(tmp_path / "cold")})
    assert bare.returncode == 1, bare.stdout + bare.stderr
    exported = re.search(r"check: model smollm2-135m: (\S+) \(not in the cache: exported to a temporary folder for "
                         r"this check, not stored\)", bare.stdout)
    assert exported and not (tmp_path / "cold").exists() and not os.path.exists(exported[1])   # removed at exit
    assert "lmeval hellaswag: FALLBACK: Rowan/hellaswag is not in the local HF datasets cache" in bare.stdout
    assert "palu calibration: data/calibration.txt (FALLBACK" in bare.stdout
    assert "3 input(s) would FALLBACK; nothing was run or written" in bare.stdout and not (tmp_path / "r").exists()


DIRECT = """
import json, lm_eval
from lm_eval.tasks import TaskManager
out, tasks = {}, TaskManager()   # one index of lm-eval's task YAMLs for both calls
for shots in (0, 1):
    res = lm_eval.simple_evaluate(model="hf", model_args="pretrained=%s,dtype=float32", tasks=["piqa", "hellaswag"],
                                  num_fewshot=shots, limit=%d, batch_size=8, device="cpu", log_samples=True,
                                  task_manager=tasks)
    for task in ("piqa", "hellaswag"):
        items = sorted(res["samples"][task], key=lambda s: s["doc_id"])
        out[f"test_lmeval[{task}-{shots}shot]"] = {
            "acc": res["results"][task]["acc,none"], "acc_norm": res["results"][task]["acc_norm,none"],
            "items": [[s["doc_id"], s["acc"], s["acc_norm"]] for s in items],
            "docs": [s["doc"] for s in items]}
print(json.dumps(out, default=str))
"""


def test_lmeval_builtin_tasks_equal_a_direct_lm_eval_call(standin_hf_home, tmp_path):
    """lm-eval's own piqa/hellaswag definitions on the cached datasets, cell by cell and item by item
    against simple_evaluate(model="hf", ...) loading the same model id from the same cache."""
    limit = 4
    proc = run_cli("gcompress_bench.llm_eval", "--variant", "baseline", "--suite", "lmeval", "--model", HF_ID,
                   "--tasks", "piqa,hellaswag", "--limit", str(limit), "--fewshot", "0,1", "--out", str(tmp_path),
                   "--run-id", "lm", env_extra={"HF_HOME": str(standin_hf_home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = json.loads((tmp_path / "default/lm/raw.json").read_text())["cells"]
    direct = offline_python(standin_hf_home, DIRECT % (HF_ID, limit))
    assert sorted(cells) == sorted(direct)
    for cid, want in direct.items():
        rec = cells[cid]
        assert [[i["doc_id"], i["acc"], i["acc_norm"]] for i in rec["items"]] == want["items"], cid
        assert (rec["acc"], rec["acc_norm"]) == (want["acc"], want["acc_norm"]), cid
        assert "FALLBACK" not in rec["source"] and rec["source"].endswith(f"revision {rec['data']['revision']})")
        assert (rec["n"], rec["n_available"], rec["split"]) == (limit, 220, "validation")
        assert rec["data"]["dataset"] == ("baber/piqa" if "piqa" in cid else "Rowan/hellaswag")
        docs = json.dumps(want["docs"], sort_keys=True, default=str).encode()
        assert rec["data"]["docs_sha256"] == hashlib.sha256(docs).hexdigest(), cid
    assert "FALLBACK" not in (tmp_path / "default/lm/run_summary.md").read_text()

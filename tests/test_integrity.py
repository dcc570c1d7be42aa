"""Integrity: no wrong number recorded as ok, no bad input past session start, no write outside the
results root. Every case runs the real CLI on the embedded model."""
import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from gcompress_bench import cache, config, methods, models
from gcompress_bench.methods.palu import factors as palu_factors

from .conftest import REPO, TINY, run_cli

HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def strict_json(path):
    """raw.json must be strict JSON: a bare NaN or Infinity fails here."""
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds a bare {c}"))


@pytest.fixture(scope="module")
def smol_spec():
    return models.resolve("smollm2-135m", config.resolve({})["models"])


@pytest.fixture(scope="module")
def nan_model(smol_spec, tmp_path_factory):
    """A model folder whose weights hold one NaN: every forward gives NaN logits."""
    folder = tmp_path_factory.mktemp("nan_model")
    for f in os.listdir(smol_spec.path):
        if not f.startswith(".") and f != "model.safetensors":
            shutil.copy(os.path.join(smol_spec.path, f), folder)
    weights = load_file(os.path.join(smol_spec.path, "model.safetensors"))
    weights["model.layers.5.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.system
def test_a_nan_metric_fails_its_cell_and_raw_json_stays_strict(nan_model, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text((REPO / "data/tiny_corpus.txt").read_text()[:4000])
    proc = run_cli("gcompress_bench.llm_eval", "--variant", "baseline", "--suite", "ppl", "--model", str(nan_model),
                   "--ppl-corpus", str(corpus), "--ppl-seq-len", "256", "--out", str(tmp_path / "r"), "--run-id", "nan")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    run = tmp_path / "r" / "default" / "nan"
    cell = strict_json(run / "raw.json")["cells"]["test_ppl[S256]"]
    windows = len(cell["window_nll"])   # every window's NLL is NaN too: the reason names the first three values
    assert cell["status"] == "failed" and windows == 4
    assert cell["reason"] == f"non-finite value in ppl, nll, window_nll[0] and {windows - 1} more"
    assert cell["ppl"] is None and cell["nll"] is None and cell["window_nll"] == [None] * windows
    assert f"[1/1] test_ppl[S256] failed ({cell['reason']})" in proc.stdout
    assert f"- test_ppl[S256]: failed ({cell['reason']}); left out of every statistic" in (
        run / "run_summary.md").read_text()
    strict_json(run / "summary.json")


@pytest.mark.system
@pytest.mark.parametrize("svd, why", [
    ("whiten", "the calibration activations of layer 6 are not finite: the model's own forward gives NaN or inf"),
    ("plain", "verification: the compressed model's logits on the probe are not finite"),
])
def test_a_compression_on_non_finite_numbers_stops_the_run(nan_model, tmp_path, svd, why):
    proc = run_cli("gcompress_bench.llm_eval", "--variant", "palu", "--suite", "ppl", "--model", str(nan_model),
                   "--palu-svd", svd, "--palu-calib-samples", "2", "--out", str(tmp_path / "r"), "--run-id", "stop")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    why = f"palu compression failed: {why}"
    assert proc.stderr.splitlines() == [f"gcompress-bench: {why}"]
    run = tmp_path / "r" / "default" / "stop"
    raw = strict_json(run / "raw.json")
    assert raw["stopped"] == why and raw["cells"] == {}
    assert raw["method_facts"] is None if svd == "whiten" else raw["method_facts"]["verification"]["finite_logits"] is False
    md = (run / "run_summary.md").read_text()
    assert f"- **STOPPED**: {why}" in md and f"test_ppl[S512]: not run ({why})" in md


@pytest.mark.system
def test_broken_factors_stop_the_run_before_any_cell(smol_spec, tmp_path):
    """A dump of the right shapes but wrong factors (random here; in the field, factors of other weights):
    top-1 agreement collapses far below what any measured compression at that ratio keeps."""
    dump = tmp_path / "SmolLM2-135M-Instruct_ratio-0.7_gs-3-fisher_uniform-whiten"
    dump.mkdir()
    ranks = {m: [128] for m in palu_factors.module_paths(smol_spec.config)}
    (dump / "config.json").write_text(json.dumps({"model_type": "palullama", "head_wise_ranks": ranks,
                                                  "original_model_name_or_path": HF_ID}))
    g = torch.Generator().manual_seed(0)
    save_file({n: torch.randn(shape, generator=g) * 0.05 for m in ranks
               for n, shape in ((f"{m}.VT.weight", (128, 576)), (f"{m}.U.0.weight", (192, 128)))},
              dump / "model.safetensors")
    proc = run_cli("gcompress_bench.llm_eval", "--variant", "palu", "--suite", "ppl", "--palu-ranks", str(dump),
                   "--out", str(tmp_path / "r"), "--run-id", "broken")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("gcompress-bench: palu compression failed: verification: top-1 agreement with the "
                           "uncompressed model is 0.")
    assert f"(loaded from {dump})" in line
    assert json.loads((tmp_path / "r/default/broken/raw.json").read_text())["cells"] == {}


def test_weights_id_follows_the_weight_files_not_their_names(tmp_path, smol_spec):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(os.path.join(smol_spec.path, "config.json"), folder)
    save_file({"w": torch.zeros(4)}, folder / "model.safetensors")
    spec = models.resolve(str(folder), {})
    first = models.weights_id(spec)
    assert first == "blocks-sha256 " + cache.digest(folder / "model.safetensors")
    time.sleep(0.01)
    save_file({"w": torch.ones(4)}, folder / "model.safetensors")   # replaced in place: same name, new weights
    assert models.weights_id(spec) not in (first, None)
    save_file({"w": torch.zeros(4)}, folder / "model.safetensors")
    assert models.weights_id(spec) == first
    assert models.weights_id(models.resolve("llama3-8b-shape", config.resolve({})["models"])) is None


@pytest.mark.system
def test_a_truncated_model_cache_is_found_and_rebuilt(smol_spec, tmp_path):
    cold = tmp_path / "cache"
    shutil.copytree(smol_spec.path, cold / "models" / "smollm2-135m")
    weights = cold / "models" / "smollm2-135m" / "model.safetensors"
    os.truncate(weights, 100_000_000)
    code = ("import json; from gcompress_bench import config, models; "
            "s = models.resolve('smollm2-135m', config.resolve({})['models']); print(json.dumps(s.cache))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GCOMPRESS_CACHE": str(cold), "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]).startswith(f"rebuilt: {weights} does not match its stored digest")
    assert weights.stat().st_size == os.path.getsize(os.path.join(smol_spec.path, "model.safetensors"))
    assert cache.problem(weights.parent) is None


CREATE = """
import sys, time
from gcompress_bench import UsageError
from gcompress_bench.results import store as results
root, start = sys.argv[1], float(sys.argv[2])
for k in range(20):
    while time.time() < start + 0.25 * k:   # every process asks for run id k at the same instant
        pass
    try:
        print(k, results.create_run_dir(root, "g", f"run{k}", explicit=True).name)
    except UsageError:
        print(k, "refused")
"""


def test_one_explicit_run_id_asked_for_at_once_is_created_exactly_once(tmp_path):
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, str(tmp_path), str(start)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}) for _ in range(6)]
    lines = [line.split() for p in procs for line in p.communicate(timeout=120)[0].splitlines()]
    for k in range(20):
        got = sorted(name for i, name in lines if i == str(k))
        assert got == ["refused"] * 5 + [f"run{k}"], got
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted(f"run{k}" for k in range(20))


# ---------------------------------------------------------------- bad input: exit 2, one stderr line, nothing created

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, smol_spec, standin_hf_home):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_text("  \n")
    (d / "short.txt").write_text("Seven words of text, no more.")
    (d / "empty_model").mkdir()
    truncated = d / "truncated_model"
    truncated.mkdir()
    shutil.copy(os.path.join(smol_spec.path, "config.json"), truncated)
    save_file({"w": torch.zeros(1000)}, truncated / "model.safetensors")
    os.truncate(truncated / "model.safetensors", 2000)
    for name in ("no_tokenizer", "header_not_tensors"):   # a config and weights that pass the size check
        (d / name).mkdir()
        shutil.copy(os.path.join(smol_spec.path, "config.json"), d / name)
    (d / "no_tokenizer" / "model.safetensors").symlink_to(os.path.join(smol_spec.path, "model.safetensors"))
    header = b'{"a":5}'
    (d / "header_not_tensors" / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    ranks = palu_factors.uniform_ranks(smol_spec.config, 0.7, 3)
    for name, value in (("true", True), ("float", 128.0)):
        (d / f"ranks_{name}.json").write_text(json.dumps({**ranks, "model.layers.0.self_attn.k_proj": [value]}))
    (d / "random_dump").mkdir()   # a PaLU dump's config beside weights that are random bytes
    (d / "random_dump" / "config.json").write_text(json.dumps({"head_wise_ranks": ranks}))
    (d / "random_dump" / "model.safetensors").write_bytes(random.Random(0).randbytes(4096))
    for name, text in (("corpus.txt", (REPO / "data/tiny_corpus.txt").read_text()), ("ranks.json", json.dumps(ranks)),
                       ("suites.yaml", (REPO / "experiments/llm_suites.yaml").read_text())):
        (d / f"locked_{name}").write_text(text)
        (d / f"locked_{name}").chmod(0)   # unreadable to the driver, which runs without root's override
    mine = (REPO / "data/tasks/mini_piqa.yaml").read_text().replace("task: mini_piqa", "task: mine")
    for name, text in (("invalid", "task: [unclosed\n"), ("no_task", "dataset_path: json\noutput_type: loglikelihood\n"),
                       ("ok", mine), ("generate", mine.replace("output_type: multiple_choice",
                                                               "output_type: generate_until"))):
        (d / f"tasks_{name}" / "deeper").mkdir(parents=True)
        (d / f"tasks_{name}" / "deeper" / "t.yaml").write_text(text)
    for name, facts in (("palu_run", {"variant": "palu", "model": "smollm2-135m", "dtype": "float32"}),
                        ("other_model_run", {"variant": "baseline", "model": HF_ID, "dtype": "float32"})):
        (d / name).mkdir()
        (d / name / "config.json").write_text(json.dumps({**facts, "suites": ["ppl"]}))
        (d / name / "raw.json").write_text('{"cells": {}}')
    # an HF cache the real client filled, then lost the model's weights (an interrupted copy)
    hub = d / "hf" / "hub"
    src = standin_hf_home / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    snapshot = next(src.glob("snapshots/*")).relative_to(src)
    big = os.path.basename(os.readlink(src / snapshot / "model.safetensors"))
    shutil.copytree(src, hub / src.name, symlinks=True, ignore=lambda folder, names: [n for n in names if n == big])
    (hub / src.name / snapshot / "model.safetensors").unlink()
    return d


def bad_cases(d):
    """(cli, args, the one stderr line, or None for any gcompress-bench line): the issue's cases by name,
    then generated bad values for every option."""
    ppl, palu_ppl = ["--suite", "ppl"], ["--variant", "palu", "--suite", "ppl"]
    suites = yaml.safe_load((REPO / "experiments/llm_suites.yaml").read_text())
    del suites["defaults"]["ppl"]["stride"]
    (d / "no_stride.yaml").write_text(yaml.safe_dump(suites))
    named = [
        ("llm_eval", [*ppl, "--ppl-corpus", "wikitext2"], "--ppl-corpus: WikiText-2 is not in the local HF datasets "
                                                          "cache"),
        ("llm_eval", [*ppl, "--suites-file", str(d / "no_stride.yaml")],
         f"suite file {d / 'no_stride.yaml'}: ppl.stride is missing (in defaults and in profile quick)"),
        ("llm_run", ["--variant", "palu", "--align-policy", "round:²"], "N must be an integer from 1 to 1024"),
        ("llm_run", ["--variant", "palu", "--align-policy", "pad:1000000000"], "N must be an integer from 1 to 1024"),
        ("llm_run", ["--inductor", "max_autotune=[unclosed"], "--inductor: 'max_autotune=[unclosed' is not allowed "
                                                              "(ParserError)"),
        ("llm_run", ["--inductor", "x=!!python/object/apply:os.system [touch pwned]"], "(ConstructorError)"),
        ("llm_run", ["--seed", "99999999999999999999999"], "--seed: 99999999999999999999999 is not allowed"),
        ("llm_run", ["--run-id", "r" * 300], "--run-id: 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr'... holds a name "
                                             "longer than 255 bytes"),
        ("llm_run", ["--run-id", "r" * 220], "--run-id: 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr'... is 220 bytes"),
        ("llm_run", ["--exp-group", "g" * 300], "--exp-group: 'gggggggggggggggggggggggggggggggggggggggg'... holds a "
                                                "name longer than 255 bytes"),
        ("llm_run", ["--prefill-batch", "١"], "--prefill-batch: '١' is not allowed; allowed: numbers in ASCII "
                                              "digits"),
        ("llm_eval", [*ppl, "--model", str(d / "no_tokenizer")], f"model '{d}/no_tokenizer': no usable tokenizer in "
                                                                 f"{d}/no_tokenizer"),
        ("llm_eval", [*ppl, "--model", str(d / "header_not_tensors")],
         f"{d}/header_not_tensors/model.safetensors is not a safetensors file (15 bytes; its header is not a table "
         "of tensors)"),
        ("llm_run", ["--variant", "palu", "--palu-group-size", "3", "--palu-ranks", str(d / "random_dump")],
         f"--palu-ranks: {d}/random_dump/model.safetensors is not a safetensors file (4096 bytes, unreadable header)"),
        ("llm_eval", [*ppl, "--ppl-corpus", str(d / "locked_corpus.txt")],
         f"--ppl-corpus: '{d}/locked_corpus.txt' can't be read (Permission denied)"),
        ("llm_run", ["--variant", "palu", "--palu-group-size", "3", "--palu-ranks", str(d / "locked_ranks.json")],
         f"--palu-ranks: {d}/locked_ranks.json can't be read (Permission denied)"),
        ("llm_run", ["--suites-file", str(d / "locked_suites.yaml")],
         f"suite file {d}/locked_suites.yaml can't be read (Permission denied)"),
        ("llm_eval", [*ppl, "--profile", "full", "--model", "smollm2-135m", "--dtype", "float32"],
         "--profile full runs on real data only, and ppl corpus: data/tiny_corpus.txt (FALLBACK: WikiText-2 not in "
         "the HF cache); fill the HF cache on a machine with network (HF_HOME=<this cache> python "
         "tools/fill_hf_cache.py), or pass --allow-fallback to run on the stand-ins, each labelled FALLBACK"),
        ("llm_eval", ["--suite", "lmeval", "--tasks", "mini_piqa", "--fewshot", "0,100000"],
         "--fewshot: 100000 is not allowed for mini_piqa, whose few-shot pool holds 120 documents; allowed: 0 to 119"),
        ("llm_eval", ["--suite", "lmeval", "--tasks", "mine", "--tasks-path", str(d / "tasks_generate")],
         f"--tasks: mine ({d}/tasks_generate/deeper/t.yaml) is 'generate_until' with metrics ['acc', 'acc_norm']; "
         "allowed: a multiple_choice task whose metrics include acc, or a RULER task"),
        ("llm_run", ["--variant", "palu", "--palu-calib-seq-len", "9000"], "--palu-calib-seq-len: 9000 is longer than "
                                                                          "the model's context of 8192 tokens"),
        ("llm_run", ["--exp-gr", "x"], "llm_run: --exp-gr: unknown option; closest: --exp-group (see --help)"),
        ("llm_eval", [*ppl, "--ppl-corpus", str(d / "empty.txt")], f"--ppl-corpus: '{d}/empty.txt' is empty"),
        ("llm_eval", [*ppl, "--ppl-corpus", "/bin/ls"], "--ppl-corpus: '/bin/ls' is not UTF-8 text (a binary file"),
        ("llm_eval", [*ppl, "--ppl-corpus", str(d / "short.txt")],
         f"--ppl-corpus: '{d}/short.txt' has 8 tokens, fewer than one window of --ppl-seq-len 512"),
        ("llm_eval", [*palu_ppl, "--palu-calib", str(d / "missing.txt")], f"--palu-calib: '{d}/missing.txt' is not a file"),
        ("llm_eval", [*palu_ppl, "--palu-calib", str(d / "short.txt")],
         f"--palu-calib: {d}/short.txt has 8 tokens, fewer than the 8 x 512 = 4096"),
        ("llm_eval", [*ppl, "--model", HF_ID], f"model '{HF_ID}': the HF cache holds a config but no weights"),
        ("llm_eval", [*ppl, "--model", str(d / "empty_model")], f"--model: the folder {d}/empty_model holds no config.json"),
        ("llm_eval", [*ppl, "--model", str(d / "truncated_model")],
         f"model '{d}/truncated_model': {d}/truncated_model/model.safetensors is 2000 bytes but its header describes"),
        ("llm_run", ["--run-id", "a/b"], "--run-id: 'a/b' is not allowed; allowed: one folder name"),
        ("llm_run", ["--run-id", "/tmp/x"], "--run-id: '/tmp/x' is not allowed"),
        ("llm_run", ["--run-id", "../../x"], "--run-id: '../../x' is not allowed"),
        ("llm_run", ["--exp-group", "/abs"], "--exp-group: '/abs' is not allowed"),
        ("llm_eval", ["--suite", "lmeval", "--tasks-path", str(d / "tasks_invalid")],
         f"--tasks-path: {d}/tasks_invalid/deeper/t.yaml is not a valid task YAML"),
        ("llm_eval", ["--suite", "lmeval", "--tasks-path", str(d / "tasks_no_task")],
         f"--tasks-path: {d}/tasks_no_task/deeper/t.yaml has no 'task:'"),
        ("llm_run", ["--prefill-batch", "1,1"], "--prefill-batch: 1,1 repeats 1; allowed: each value once"),
        ("llm_run", [*TINY, "--shard", "7/8"], "--shard: 7/8 is not allowed: the selection has 3 cells"),
        ("llm_run", ["--variant", "palu", "--palu-ranks", str(d / "ranks_true.json")], "rank True is not allowed"),
        ("llm_run", ["--variant", "palu", "--palu-ranks", str(d / "ranks_float.json")], "rank 128.0 is not allowed"),
        ("llm_eval", [*palu_ppl, "--baseline-run", str(d / "palu_run")], "it is a 'palu' run"),
        ("llm_eval", [*palu_ppl, "--baseline-run", str(d / "other_model_run")], f"its model is '{HF_ID}'"),
        ("llm_run", ["--variant", "foo"], "--variant: unknown value 'foo'; allowed: baseline, palu"),
        ("llm_run", ["--model", "nope"], "--model: unknown model 'nope'"),
        ("llm_run", ["--prefill-seq-len", "9000"], "--prefill-seq-len 9000 is longer than the model's context"),
        ("llm_run", ["--decode-mode", "compiled", "--device", "cpu"], "--decode-mode compiled needs a CUDA device"),
        ("llm_run", ["--variant", "palu", "--palu-group-size", "2"], "--palu-group-size: 2 does not divide"),
        ("llm_eval", ["--suite", "lmeval", "--tasks", "nope"], f"--tasks: unknown task 'nope'; searched "
                                                               f"{REPO / 'data/tasks'}, the installed lm-eval's "
                                                               "built-in tasks; allowed: a task of the installed "
                                                               "lm-eval (e.g. piqa, hellaswag) or one of "
                                                               "mini_hellaswag, mini_piqa"),
        ("llm_eval", ["--suite", "lmeval", "--tasks", "nope", "--tasks-path", str(d / "tasks_ok")],
         f"--tasks: unknown task 'nope'; searched {d}/tasks_ok (recursively), {REPO / 'data/tasks'}, the installed"),
        ("llm_eval", ["--suite", "lmeval", "--limit", "0"], "--limit: 0 is not allowed; it must be an integer >= 1 or "
                                                            "'all'"),
        ("llm_eval", ["--suite", "lmeval", "--limit", "most"], "--limit: 'most' is not an integer or 'all'"),
        ("llm_eval", ["--suite", "bleu"], "llm_eval: --suite: unknown suite 'bleu'; allowed: ppl, lmeval, longctx"),
        ("llm_eval", ["--suite", "longctx", "--longctx-tasks", "haystack"], "--longctx-tasks: haystack is not "
                                                                            "allowed; allowed: passkey, multikey, "
                                                                            "vartrack (data/longctx/tasks.yaml)"),
        ("llm_eval", ["--suite", "longctx", "--longctx-depths", "0,1.5"], "--longctx-depths: [0.0, 1.5] is not "
                                                                          "allowed; allowed: fractions from 0 to 1"),
        ("llm_eval", ["--suite", "longctx", "--longctx-depths", "half"], "--longctx-depths: 'half' is not a "
                                                                         "comma-separated list of numbers"),
        ("llm_eval", ["--suite", "longctx", "--longctx-items", "0"], "--longctx-items: 0 is not allowed; it must be "
                                                                     "positive integers"),
        ("llm_eval", ["--suite", "longctx", "--longctx-tasks", "vartrack", "--longctx-lengths", "128,1024"],
         "--longctx-lengths: longctx vartrack: a length of 128 tokens cannot hold the needles and the question; "
         "allowed: at least 145 tokens"),
        ("llm_eval", ["--suite", "longctx", "--longctx-lengths", "9000"],
         "--longctx-lengths + --longctx-max-new-tokens 9012 is longer than the model's context of 8192 tokens; "
         "allowed: at most 8192"),
        ("llm_eval", ["--suite", "lmeval", "--tasks", "arc_easy"], "--tasks: arc_easy's dataset 'allenai/ai2_arc' is "
                                                                   "not in the local HF datasets cache"),
        ("llm_eval", [*ppl, "--model", "llama3-8b-shape"], "--model: 'llama3-8b-shape' has synthetic weights; the "
                                                           "quality suites (ppl, lmeval, longctx) need pretrained weights"),
        ("llm_run", ["--decode-mode", "graph"], "--decode-mode: ['graph'] is not allowed; allowed: one or more of "
                                                "eager, compiled"),
        ("llm_run", ["--variant", "palu", "--palu-cache", "latent", "--palu-latent-kernel", "fused"],
         "--palu-latent-kernel: 'fused' cannot run here: no CUDA device (the device is cpu); allowed: auto, unfused"),
        ("llm_run", ["--inductor", "max_autotune=maybe"], "--inductor: max_autotune='maybe' is not allowed; allowed: a "
                                                          "bool"),
    ]
    cases = [(cli, args, line) for cli, args, line in named]
    registered = methods.load().values()
    choices = {f"--{m.name}-{o.key.replace('_', '-')}" for m in registered for o in m.options if o.choices}
    for flag, _, kind, _ in config.options():
        values = {"int": ["x", "1.5", "١٢"], "float": ["x", "nan", "٠٫٥"], "ints": ["1,x", "-4", "2,2", "1,٢"],
                  "strs": [","], "floats": ["x", "0.5,0.5", "2", "٠٫٥"], "limit": ["0", "some", "٣"],
                  "str": ["bogus", "!!python/object/apply:os.system [touch pwned]", "n" * 300], "flag": [],
                  "settings": ["x", "bogus_knob=1", "x=!!python/name:os.system"]}[kind]
        if flag in ("--results-root", "--run-id", "--exp-group", "--seed"):
            continue     # any name is a valid results root or id; any integer a seed
        if kind == "str" and flag not in ("--profile", "--device", "--dtype", "--shard", *choices):
            values = [str(d / "no" / "such"), str(d / "locked_corpus.txt"), str(d / ("n" * 300))]   # paths and names
        cases += [("llm_eval" if flag.startswith(("--ppl", "--tasks", "--limit", "--fewshot", "--baseline"))
                   else "llm_run", ["--variant", next((m.name for m in registered if flag.startswith(f"--{m.name}-")),
                                                      "palu"), flag, v], None) for v in values]
    return cases


@pytest.mark.system
def test_bad_input_exits_2_with_one_stderr_line_and_creates_nothing(bad_files, tmp_path):
    cases = bad_cases(bad_files)
    root = tmp_path / "results"
    (tmp_path / "cases.json").write_text(json.dumps([{"cli": c, "args": a, "root": str(root)} for c, a, _ in cases]))
    env = {**os.environ, "HF_HOME": str(bad_files / "hf"), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}
    as_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    proc = subprocess.run([*as_user, sys.executable, "-m", "tests.bad_input_driver", str(tmp_path / "cases.json"),
                           str(tmp_path / "out.json")], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert len([c for c in cases if c[2] is None]) >= 50   # generated, besides the named cases
    wrong = [(args, res) for (cli, args, line), res in zip(cases, got)
             if res["rc"] != 2 or len(res["stderr"]) != 1 or res["new_files"]
             or not res["stderr"][0].startswith(("gcompress-bench: ", f"{cli}: ")) or (line and line not in res["stderr"][0])]
    assert wrong == [] and not root.exists()

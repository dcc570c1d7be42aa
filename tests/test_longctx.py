"""longctx on the embedded SmolLM2's tokenizer and model: exact-length prompts, needles at sentence
boundaries at the asked depth, answers stated as the needles state them, exact-match scoring, and the
greedy loop checked against HF generate."""
import hashlib
import itertools
import re

import numpy as np
import pytest
import torch

from gcompress_bench import UsageError, models
from gcompress_bench.config import resolve
from gcompress_bench.results import plots
from gcompress_bench.suites import longctx

TASKS = longctx.load_tasks()


@pytest.fixture(scope="module")
def spec():
    return models.resolve("smollm2-135m", resolve({})["models"])


@pytest.fixture(scope="module")
def tok(spec):
    return models.load_tokenizer(spec)


@pytest.fixture(scope="module")
def hay():
    return longctx.haystack()[0]


@pytest.fixture(scope="module")
def smol(spec):
    return models.load(spec, "float32", torch.device("cpu"))


def test_tasks_are_the_yaml():
    assert set(TASKS) == {"passkey", "multikey", "vartrack"}
    assert (TASKS["passkey"].chains, TASKS["passkey"].hops, TASKS["passkey"].digits) == (1, 1, 5)
    assert (TASKS["multikey"].chains, TASKS["multikey"].digits, len(set(TASKS["multikey"].names))) == (4, 7, 24)
    assert (TASKS["vartrack"].chains, TASKS["vartrack"].hops, TASKS["vartrack"].letters) == (2, 4, 5)


def test_haystack_keeps_the_prose_only(tmp_path):
    md = tmp_path / "doc.md"
    md.write_text("# Title\n\nFirst sentence here. Second one spans\ntwo lines, see [the docs](docs/X.md).\n\n"
                  "| a | b |\n|---|---|\n| 1 | 2 |\n\n```bash\nrun this --now\n```\n\n"
                  "- a list item with `code` and **bold**\n  continued\n- another item.\n\n{[(=>)]}: ~~ ##\n")
    text, sha = longctx.haystack([md])
    assert text == ("First sentence here.\nSecond one spans two lines, see the docs.\n"
                    "a list item with code and bold continued\nanother item.")
    assert sha == hashlib.sha256(text.encode()).hexdigest()
    default, sha = longctx.haystack()
    readme_first = "A pytest-based benchmark suite that measures what KV-cache compression really buys an LLM."
    assert default.splitlines()[0] == readme_first and sha == hashlib.sha256(default.encode()).hexdigest()
    assert not any(s.startswith(("|", "#")) or "```" in s for s in default.splitlines())
    # the default is a text file taken from the docs once, read line by line: editing the docs changes no prompt
    assert default == (longctx.REPO_ROOT / "data/longctx/haystack.txt").read_text().strip()


def test_haystack_that_is_not_text_is_one_line(tmp_path):
    with pytest.raises(UsageError, match=r"^longctx haystack: '.*nope.md' is not a file; allowed: markdown or text "
                                         r"files with prose$"):
        longctx.haystack([tmp_path / "nope.md"])


def boundaries(tok, hay, upto):
    """Token offsets in the filler where a haystack sentence ends, the haystack repeated as needed."""
    out = [0]
    for s in itertools.cycle(hay.splitlines()):
        if out[-1] >= upto:
            return out
        out.append(out[-1] + len(tok(" " + s, add_special_tokens=False).input_ids))


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("length, depth", [(256, 0.0), (300, 0.25), (1024, 0.5), (777, 0.75), (2048, 1.0)])
def test_prompt_length_is_exact_and_the_needle_sits_at_the_depth(tok, hay, task, length, depth):
    items = longctx.build_items(TASKS[task], tok, length, depth, 3, 7, hay)
    assert len(items) == 3 and len({i["id"] for i in items}) == 3
    for it in items:
        ids, off = it["input_ids"], it["needle_token_offset"]
        assert len(ids) == length and tok(tok.decode(ids)).input_ids == ids   # what the tokenizer makes of the text
        asked = next(n for n in it["needles"] if (n["chain"], n["hop"]) == (0, 0))
        assert asked["offset"] == off and tok.decode(ids[off:off + asked["tokens"]]) == " " + asked["text"]
        fill = it["filler_tokens"]
        assert len(ids) == it["filler_start"] + fill + sum(n["tokens"] for n in it["needles"]) + len(
            tok("\n\n" + it["question"], add_special_tokens=False).input_ids)
        before = off - it["filler_start"] - sum(n["tokens"] for n in it["needles"] if n["offset"] < off)
        target = depth * fill
        if depth == 1.0:
            assert before == fill
        else:   # at a sentence boundary, none nearer the target
            bounds = boundaries(tok, hay, fill)
            assert before in bounds and all(abs(before - target) <= abs(b - target) for b in bounds if b <= fill)
            assert abs(before - target) <= max(b - a for a, b in zip(bounds, bounds[1:]))


def test_answers_are_stated_as_the_needles_state_them(tok, hay):
    for it in longctx.build_items(TASKS["passkey"], tok, 1024, 0.5, 4, 1, hay):
        text, a = tok.decode(it["input_ids"]), it["answer"]
        assert re.fullmatch(r"\d{5}", a) and text.count(a) == 2
        assert f" The pass key is {a}. Remember it. {a} is the pass key. " in text
        assert text.endswith("\n\nWhat is the pass key? The pass key is")
    for it in longctx.build_items(TASKS["multikey"], tok, 1024, 0.25, 4, 1, hay):
        text, a = tok.decode(it["input_ids"]), it["answer"]
        name = re.search(r"What is the special magic number for (\w+)\? The special magic number for \1 is$", text)[1]
        stated = dict(re.findall(r"The special magic number for (\w+) is (\d+)\.", text))
        assert len(stated) == 4 and len(set(stated.values())) == 4 and stated[name] == a and text.count(a) == 1
        assert re.fullmatch(r"\d{7}", a)


def resolve_var(text, var):
    """An independent interpreter of the VAR statements in a prompt."""
    env = {}
    for name, ref, value in re.findall(r"VAR ([A-Z]+) = (?:VAR ([A-Z]+)|(\d+))\.", text):
        env[name] = env[ref] if ref else value
    return env[var], env


def test_vartrack_chain_resolves_to_the_answer(tok, hay):
    for depth in (0.0, 0.5, 1.0):
        for it in longctx.build_items(TASKS["vartrack"], tok, 900, depth, 3, 2, hay):
            text = tok.decode(it["input_ids"])
            var = re.search(r"What is the value of VAR ([A-Z]{5})\? The value of VAR \1 is$", text)[1]
            value, env = resolve_var(text, var)
            assert value == it["answer"] and len(env) == 8 and len(set(env.values())) == 2   # 2 chains of 4
            first = text.index(f"VAR {next(n for n, v in env.items() if v == value)} = {value}.")
            assert tok.decode(it["input_ids"][:it["needle_token_offset"]]) == text[:first - 1]


def test_items_depend_on_the_seed_only(tok, hay):
    for name, task in TASKS.items():
        a, b = (longctx.build_items(task, tok, 512, 0.5, 5, 3, hay) for _ in range(2))
        c = longctx.build_items(task, tok, 512, 0.5, 5, 4, hay)
        assert a == b
        assert not {i["answer"] for i in a} & {i["answer"] for i in c}
        assert [i["id"] for i in a] == [f"{name}-L512-d0.5-s3-{k}" for k in range(5)]


def test_haystack_repeats_when_the_prompt_needs_more(tok, tmp_path):
    md = tmp_path / "short.md"
    md.write_text("Cats sleep a lot. Dogs bark at night. Birds sing at dawn.\n")
    hay, _ = longctx.haystack([md])
    it = longctx.build_items(TASKS["passkey"], tok, 200, 0.0, 1, 0, hay)[0]
    filler = tok.decode(it["input_ids"][it["filler_start"]:])
    assert len(it["input_ids"]) == 200 and filler.count("Dogs bark at night.") >= 5


def test_too_short_a_length_is_one_line(tok, hay):
    with pytest.raises(UsageError) as e:
        longctx.build_items(TASKS["passkey"], tok, 50, 0.5, 1, 0, hay)
    assert str(e.value) == ("longctx passkey: a length of 50 tokens cannot hold the needles and the question; "
                            "allowed: at least 62 tokens")
    it = longctx.build_items(TASKS["passkey"], tok, 62, 0.5, 1, 0, hay)[0]
    assert len(it["input_ids"]) == 62 and it["filler_tokens"] == 0
    with pytest.raises(UsageError, match=r"^longctx: depth 1.5 is outside the filler; allowed: 0.0 to 1.0$"):
        longctx.build_items(TASKS["passkey"], tok, 256, 1.5, 1, 0, hay)


@pytest.mark.parametrize("output, ok", [
    (" 48213", True), (" 48213.\n\nThe pass key", True), ("48213;", True), ("  48213:\nmore", True),
    (" 48213 .", False), (" 48213. Remember it.", False), (" 48213 is the pass key", False), ("\n48213", False),
    (" 482130", False), (" 4821", False), ("48213!", False), ("", False)])
def test_score_is_exact_on_the_first_line(output, ok):
    assert longctx.score(output, "48213") is ok


def test_accuracy_grid_and_heatmap(tmp_path):
    items = [{"length": L, "depth": d, "correct": c} for L, d, c in
             [(1024, 0.0, 1), (1024, 0.0, 0), (1024, 0.5, 1), (256, 0.5, 0), (256, 0.0, 1), (256, 0.0, 1),
              (4096, 1.0, 0)]]
    grid = longctx.accuracy_grid(items)
    assert grid == {"lengths": [256, 1024, 4096], "depths": [0.0, 0.5, 1.0],
                    "acc": [[1.0, 0.0, None], [0.5, 1.0, None], [None, None, 0.0]],
                    "n": [[2, 1, 0], [2, 1, 0], [0, 0, 1]]}
    fig = plots.heatmap(grid, "passkey, baseline")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["1.00\nn=2", "0.00\nn=1", "n/a", "0.50\nn=2", "1.00\nn=1", "n/a",
                                                "n/a", "n/a", "0.00\nn=1"]
    shown = ax.images[0].get_array()
    assert np.array_equal(np.ma.getmaskarray(shown) | np.isnan(shown.data),
                          [[False, False, True], [False, False, True], [True, True, False]])
    assert ax.images[0].get_cmap().get_bad()[:3] == pytest.approx((0.827, 0.827, 0.827), abs=1e-3)   # lightgrey
    assert plots.save(fig, tmp_path / "heat.png") == "heat.png"
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def hf_generate(lm, item, max_new_tokens, eos):
    ids = torch.tensor([item["input_ids"]])
    with torch.inference_mode():
        gen = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos[0])
    gen = gen[0, ids.shape[1]:].tolist()
    return lm.tokenizer.decode(gen[:-1] if gen[-1] in eos else gen), len(gen)


@pytest.mark.system
def test_evaluate_equals_hf_generate(smol, hay, monkeypatch):
    """The suite's own greedy loop against HF generate on the same prompts: same tokens, same stop."""
    items = [longctx.build_items(TASKS[name], smol.tokenizer, 256, depth, 1, 5, hay)[0]
             for name, depth in (("passkey", 0.5), ("multikey", 0.25), ("vartrack", 0.0))]
    got = longctx.evaluate(smol, items, 12)
    eos = [smol.model.generation_config.eos_token_id]
    assert longctx.eos_ids(smol) == set(eos) == {smol.tokenizer.eos_token_id}
    assert got["n"] == 3 and [i["id"] for i in got["items"]] == [i["id"] for i in items]
    for item, res in zip(items, got["items"]):
        assert (res["output"], res["new_tokens"]) == hf_generate(smol, item, 12, eos)
        assert res["correct"] == int(longctx.score(res["output"], item["answer"]))
    assert [i["correct"] for i in got["items"]] == [1, 1, 0] and got["accuracy"] == pytest.approx(2 / 3)
    # a second EOS id (as Llama-3-Instruct has): the newline after the key stops both loops there
    newline, = smol.tokenizer("\n", add_special_tokens=False).input_ids
    monkeypatch.setattr(smol.model.generation_config, "eos_token_id", [eos[0], newline])
    stopped = longctx.evaluate(smol, items[:1], 12)["items"][0]
    assert (stopped["output"], stopped["new_tokens"]) == hf_generate(smol, items[0], 12, [eos[0], newline])
    assert stopped["output"] == f" {items[0]['answer']}." and stopped["new_tokens"] == 8


@pytest.mark.system
def test_longctx_suite_baseline_against_palu_latent_end_to_end(tmp_path):
    """`-m longctx` through the CLI, a baseline run and a palu latent-cache run paired with it: the same prompts,
    scores recomputed from the outputs, per-depth accuracy, McNemar against scipy, heatmaps and the report."""
    from scipy.stats import binomtest

    from gcompress_bench.results.store import read_json

    from .conftest import run_cli
    root = tmp_path / "results"
    grid = ["--suite", "longctx", "--out", str(root), "--longctx-tasks", "passkey", "--longctx-lengths", "256",
            "--longctx-items", "3", "--longctx-depths", "0,0.5,1"]
    env = {"OMP_NUM_THREADS": "1"}
    base = run_cli("gcompress_bench.llm_eval", *grid, "--run-id", "base", env_extra=env)
    assert base.returncode == 0, base.stdout + base.stderr
    latent = run_cli("gcompress_bench.llm_eval", *grid, "--run-id", "latent", "--variant", "palu", "--palu-cache",
                     "latent", "--baseline-run", str(root / "default" / "base"), env_extra=env)
    assert latent.returncode == 0, latent.stdout + latent.stderr
    cells = {r: read_json(root / "default" / r / "raw.json")["cells"]["test_longctx[passkey-L256]"]
             for r in ("base", "latent")}
    sha = longctx.haystack()[1]
    for c in cells.values():
        assert c["status"] == "ok" and c["n"] == 9 and c["haystack"]["sha256"] == sha and c["seed"] == 1234
        assert [i["correct"] for i in c["items"]] == [int(longctx.score(i["output"], i["answer"])) for i in c["items"]]
        assert c["accuracy"] == pytest.approx(np.mean([i["correct"] for i in c["items"]]))
        for d in (0.0, 0.5, 1.0):
            assert c["by_depth"][f"{d:g}"] == pytest.approx(np.mean([i["correct"] for i in c["items"]
                                                                      if i["depth"] == d]))
    assert [i["id"] for i in cells["base"]["items"]] == [i["id"] for i in cells["latent"]["items"]]
    assert read_json(root / "default" / "latent" / "config.json")["palu"]["cache"] == "latent"
    a, b = ([i["correct"] for i in cells[r]["items"]] for r in ("base", "latent"))
    only_base, only_latent = sum(x > y for x, y in zip(a, b)), sum(y > x for x, y in zip(a, b))
    p = read_json(root / "default" / "latent" / "summary.json")["paired"]["cells"]["test_longctx[passkey-L256]"]
    assert (p["only_reference_right"], p["only_candidate_right"], p["n_paired"]) == (only_base, only_latent, 9)
    n = only_base + only_latent
    assert p["mcnemar_p"] == pytest.approx(binomtest(min(only_base, only_latent), n, 0.5).pvalue if n else 1.0)
    assert p["same_prompts"] and p["reference_retrieves"] == (np.mean(a) >= 0.5)
    md = (root / "default" / "latent" / "run_summary.md").read_text()
    assert "![longctx_passkey.png](plots/longctx_passkey.png)" in md
    assert (root / "default" / "latent" / "plots" / "longctx_passkey.png").stat().st_size > 0
    assert f"- test_longctx[passkey-L256]: palu {np.mean(b):.4f} vs baseline {np.mean(a):.4f}" in md


def test_depths_that_print_alike_are_refused():
    """A cell keeps its accuracy per depth under the printed depth: two depths printed alike would share one
    entry and keep one item's score."""
    g = {"tasks": ["passkey"], "depths": [0.5, 0.5000001], "lengths": [1024], "items": 2, "max_new_tokens": 12}
    with pytest.raises(UsageError) as e:
        longctx.check_grid(g)
    assert str(e.value) == ("--longctx-depths: 0.5,0.5000001 holds depths that print alike (0.5) and would share one "
                            "entry; allowed: depths that differ in their first 6 significant digits")
    longctx.check_grid({**g, "depths": [0.5, 0.50001]})   # 0.5 and 0.50001: two entries

import pytest

from gcompress_bench import UsageError
from gcompress_bench.config import check_lengths, resolve
from gcompress_bench.suites import SUITES, Cell, marker_expr


def grid_cells(cfg, suite):
    return [(c.id, c.params) for c in SUITES[suite].cells(cfg[suite])]


def test_defaults_come_from_the_yaml():
    cfg = resolve({})
    assert (cfg["variant"], cfg["profile"], cfg["model"]) == ("baseline", "quick", "smollm2-135m")
    full = resolve({"profile": "full"})
    assert full["model"] == "meta-llama/Meta-Llama-3-8B-Instruct" and full["dtype"] == "bfloat16"
    assert full["prefill"]["batch"] == [1, 4, 8] and full["prefill"]["seq_len"] == [256, 512, 1024, 2048, 4096]
    assert full["decode"]["ctx"] == [512, 1024, 2048] and full["decode"]["gen"] == [64, 128]
    assert full["prefill"]["warmup"] >= 10 and full["decode"]["warmup"] >= 5
    assert full["prefill"]["iters"] >= 30 and full["decode"]["iters"] * full["decode"]["trials"] >= 30
    assert full["palu"]["group_size"] == 4 and cfg["palu"]["group_size"] == 3


def test_limit_takes_all():
    assert resolve({"limit": "all"})["lmeval"]["limit"] == "all" and resolve({"limit": "7"})["lmeval"]["limit"] == 7
    assert resolve({})["palu"]["factors"] == "load" and resolve({"check_only": True})["check_only"] is True


def test_overrides_and_cell_ids():
    cfg = resolve({"prefill_batch": "4", "prefill_seq_len": "1024,2048", "iters": "7"})
    assert [i for i, _ in grid_cells(cfg, "prefill")] == ["B4-S1024", "B4-S2048"]
    assert cfg["prefill"]["iters"] == cfg["decode"]["iters"] == 7
    assert grid_cells(resolve({"decode_batch": "2"}), "decode")[0] == (
        "B2-ctx32-gen8", {"batch": 2, "ctx": 32, "gen": 8, "mode": "eager"})
    both = grid_cells(resolve({"decode_batch": "1", "decode_mode": "eager,compiled"}), "decode")
    assert [i for i, _ in both] == ["B1-ctx32-gen8", "B1-ctx32-gen8-compiled"]
    assert resolve({"profile": "full"})["decode"]["mode"] == ["compiled"]
    cell = SUITES["decode"].cells(resolve({"decode_batch": "2"})["decode"])[0]
    assert cell == Cell("decode", "B2-ctx32-gen8", {"batch": 2, "ctx": 32, "gen": 8, "mode": "eager"}, 8 * (256 + 8))
    assert (marker_expr("infer_sweep"), marker_expr("ppl")) == ("prefill or decode", "ppl")
    long = resolve({"profile": "long"})["decode"]
    assert (long["ctx"], long["batch"], long["gen"], long["mode"]) == (
        [4096, 8192, 16384, 32768], [1, 8], [64], ["eager", "compiled"])


@pytest.mark.parametrize("given, message", [
    ({"variant": "foo"}, "--variant: unknown value 'foo'; allowed: baseline, palu, asvd, prune"),
    ({"asvd_ratio": "0"}, "--asvd-ratio: 0.0 is not allowed; it must be in (0, 1]"),
    ({"variant": "asvd", "align_policy": "round:0"}, "--align-policy: 'round:0' is not allowed; N must be an integer "
                                                     "from 1 to 1024 (no kernel tile is wider); allowed: none, round:N, "
                                                     "pad:N (1 <= N <= 1024) or budget:TABLE (a dims run dir or its "
                                                     "dims_table.json)"),
    ({"variant": "palu", "align_policy": "snap:8"}, "--align-policy: unknown value 'snap:8'; allowed: none, round:N, "
                                                    "pad:N (1 <= N <= 1024) or budget:TABLE (a dims run dir or its "
                                                    "dims_table.json)"),
    ({"align_policy": "pad:8"}, "--align-policy: 'pad:8' is not allowed with --variant baseline, which has no dims to "
                                "align; allowed: method"),
    ({"ops_profile": "-1"}, "--ops-profile: -1 is not allowed; it must be an integer >= 0 (0 = off)"),
    ({"asvd_calib_samples": "x"}, "--asvd-calib-samples: 'x' is not an integer"),
    ({"layout": "packed"}, "--layout: unknown value 'packed'; allowed: hf, fused"),
    ({"inductor": "coordinate_descent"}, "--inductor: 'coordinate_descent' is not allowed; allowed: key=value, "
                                         "comma-separated"),
    ({"inductor": "no_such_knob=1"}, "--inductor: 'no_such_knob' is not a torch._inductor.config setting; allowed: "
                                     "its settings, e.g. coordinate_descent_tuning, max_autotune, epilogue_fusion"),
    ({"inductor": "max_autotune=1"}, "--inductor: max_autotune=1 is not allowed; allowed: a bool, e.g. "
                                     "max_autotune=False"),
    ({"profile": "huge"}, "--profile: unknown profile 'huge'; allowed: full, long, quick"),
    ({"model": "nope"}, "--model: unknown model 'nope'; allowed: smollm2-135m, llama3-8b-shape, an HF id "
                        "(org/name) in the local HF cache, or a local model folder"),
    ({"dtype": "int8"}, "--dtype: unknown value 'int8'; allowed: float32, bfloat16, float16"),
    ({"prefill_batch": "0"}, "--prefill-batch: [0] is not allowed; values must be positive integers"),
    ({"decode_gen": "-1"}, "--decode-gen: [-1] is not allowed; values must be positive integers"),
    ({"prefill_seq_len": "1,x"}, "--prefill-seq-len: '1,x' is not a comma-separated list of integers"),
    ({"iters": "0"}, "--iters (prefill): 0 is not allowed; it must be an integer >= 1"),
    ({"palu_ratio": "0"}, "--palu-ratio: 0.0 is not allowed; it must be in (0, 1]"),
    ({"palu_ratio": "1.5"}, "--palu-ratio: 1.5 is not allowed; it must be in (0, 1]"),
    ({"palu_svd": "qr"}, "--palu-svd: unknown value 'qr'; allowed: whiten, plain"),
    ({"palu_factors": "reuse"}, "--palu-factors: unknown value 'reuse'; allowed: load, recompute"),
    ({"decode_mode": "eager,eager"}, "--decode-mode: eager,eager repeats eager; allowed: each value once"),
    ({"suites_file": "/nonexistent.yaml"}, "suite file /nonexistent.yaml does not exist"),
    ({"inductor": "max_autotune=[unclosed"}, "--inductor: 'max_autotune=[unclosed' is not allowed (ParserError); "
                                             "allowed: key=value with a plain value (a number, true/false, a word, a "
                                             "list)"),
    ({"inductor": "max_autotune=!!python/object/apply:os.system [x]"},
     "--inductor: 'max_autotune=!!python/object/apply:os.system [x]' is not allowed (ConstructorError); allowed: "
     "key=value with a plain value (a number, true/false, a word, a list)"),
    ({"seed": "99999999999999999999999"}, "--seed: 99999999999999999999999 is not allowed; allowed: an integer from 0 "
                                          "to 2**32 - 1 (numpy's and torch's seeds both take it)"),
    ({"seed": "-1"}, "--seed: -1 is not allowed; allowed: an integer from 0 to 2**32 - 1 (numpy's and torch's seeds "
                     "both take it)"),
    ({"run_id": "r" * 250}, "--run-id: 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr'... is 250 bytes long; allowed: a "
                            "folder name of at most 200 bytes"),
    ({"run_id": "r" * 300}, "--run-id: 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr'... holds a name longer than 255 "
                            "bytes; allowed: names of at most 255 bytes (the file system's limit)"),
    ({"ppl_corpus": "/tmp/" + "n" * 256}, "--ppl-corpus: " + repr(("/tmp/" + "n" * 256)[:40]) + "... holds a name "
                                          "longer than 255 bytes; allowed: names of at most 255 bytes (the file "
                                          "system's limit)"),
    ({"iters": "١٢"}, "--iters: '١٢' is not allowed; allowed: numbers in ASCII digits"),
    ({"ppl_seq_len": "٣"}, "--ppl-seq-len: '٣' is not allowed; allowed: numbers in ASCII digits"),
    ({"exp_group": "g" * 201}, "--exp-group: 'gggggggggggggggggggggggggggggggggggggggg'... is 201 bytes long; allowed: "
                               "a folder name of at most 200 bytes"),
])
def test_bad_input_gets_one_clear_line(given, message):
    with pytest.raises(UsageError) as e:
        resolve(given)
    assert str(e.value) == message


def test_length_beyond_context():
    cfg = resolve({"decode_ctx": "8000", "decode_gen": "300"})
    with pytest.raises(UsageError, match=r"^--decode-ctx \+ --decode-gen 8300 is longer than the model's context "
                                         r"of 8192 tokens; allowed: at most 8192$"):
        check_lengths(cfg, 8192, ["prefill", "decode"])


def test_synthetic_models_time_any_length():
    cfg = resolve({"decode_ctx": "32768", "decode_gen": "64"})
    assert check_lengths(cfg, 8192, ["prefill", "decode"], synthetic=True) is None
    with pytest.raises(UsageError, match=r"^--decode-ctx \+ --decode-gen 32832 is longer"):
        check_lengths(cfg, 8192, ["prefill", "decode"])


def test_a_calibration_window_longer_than_the_model_is_refused_before_any_weight_loads():
    from gcompress_bench import models
    from gcompress_bench.methods import calibration
    cfg = models._config_from_file(models.REPO_ROOT / "data/models/llama3-8b-instruct.config.json")
    with pytest.raises(UsageError) as e:
        calibration.windows(None, cfg, {"calib_samples": 1, "calib_seq_len": 9000, "calib": "auto"}, "palu")
    assert str(e.value) == ("--palu-calib-seq-len: 9000 is longer than the model's context of 8192 tokens; allowed: "
                            "at most 8192")

"""Benchmarks and the demo run end to end on a tiny budget (their numbers are not tested)."""

import json
import shutil

from conftest import assert_one_line_error, cli_env, run_cli


def test_speed_benchmark_writes_json(tmp_path):
    run_cli("bench", "speed", "--tiny", "--profile", "--out-dir", tmp_path, check=0)
    r = json.loads((tmp_path / "speed_tiny.json").read_text())
    assert {"command", "machine", "date", "seed"} <= r.keys()
    assert r["matmul_fp32_gflop_per_s"] > 0 and r["data_s_per_batch"] > 0
    rows = {x["preset"]: x for x in r["results"]}
    assert set(rows) == {"fmnist-base-xs", "fmnist-dfm-xs"}
    for x in rows.values():
        assert x["train_images_per_s"] > 0 and x["sample_images_per_s"] > 0 and x["train_gflop_per_image"] > 0
        # peak memory of a fresh process: training holds more than the idle interpreter
        mem = x["memory"]
        assert mem["train"]["peak_rss_mb"] > mem["train"]["above_idle_mb"] > 0
        assert mem["sample"]["peak_rss_mb"] > mem["sample"]["above_idle_mb"] >= 0
        # the peer (diffusers' DiT, installed by `make install`) timed beside ours
        peer = x["peer"]
        assert peer["train_step_s"] > 0 and peer["forward_s"] > 0
        assert peer["train_ratio"] > 0 and peer["forward_ratio"] > 0
        assert x["bf16"]["train_speedup"] > 0 and x["bf16"]["sample_images_per_s"] > 0
    # DFM's training pass costs about what base's does (+0.5% FLOPs at s)
    assert 0.9 < rows["fmnist-dfm-xs"]["train_gflop_per_image"] / rows["fmnist-base-xs"]["train_gflop_per_image"] < 1.2
    prof = json.loads((tmp_path / "speed_tiny_profile.json").read_text())["profiles"]
    assert [p["preset"] for p in prof] == ["fmnist-base-xs", "fmnist-dfm-xs"]
    for p in prof:
        assert any(o["op"] in ("aten::mm", "aten::addmm") for o in p["top_ops"])
        assert 0 < sum(o["share"] for o in p["top_ops"]) <= 1 + 1e-9


def test_speed_peer_is_diffusers_dit_at_our_shape_or_skipped(monkeypatch):
    from progflow.bench import speed
    from progflow.nn.dit import build_model, count_parameters
    from progflow.presets import preset_config

    cfg = preset_config("fmnist-base-s")
    peer = speed.peer_model(cfg)
    assert peer is not None, "make install installs diffusers (progflow[peer])"
    x, t, y = build_model(cfg).example_inputs(2)
    out = peer(x, timestep=t * 1000, class_labels=y, return_dict=False)[0]
    assert out.shape == x.shape  # same image in, same velocity shape out
    # same width/depth/heads/patch: parameter counts within the 10-15% the issue measured
    assert 1.0 < count_parameters(peer) / count_parameters(build_model(cfg)) < 1.2
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)  # as if not installed
    assert speed.peer_model(cfg) is None
    assert "pip install progflow[peer]" in speed.peer_rows(cfg, None, None, None, None, None, rounds=1, steps=1,
                                                           sample_batch=1)["skipped"]


def test_quality_benchmark_writes_json_and_plot(tmp_path, quick_classifier_cache):
    env = cli_env(PROGFLOW_CACHE=str(quick_classifier_cache))
    args = ("bench", "quality", "--tiny", "--out-dir", tmp_path, "--runs-dir", tmp_path / "runs")
    # part of the work first (as one of several processes would): only that arm, no step timing
    run_cli(*args, "--arms", "dfm3", env=env, check=0, timeout=600)
    part = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert [r_["arm"] for r_ in part["runs"]] == ["dfm3"] and part["step_time"] is None
    dfm3_log = tmp_path / "runs" / "bench-quality-tiny" / "dfm3-seed0" / "log.jsonl"
    before = dfm3_log.read_text()

    run_cli(*args, env=env, check=0, timeout=600)
    r = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert {r_["arm"] for r_ in r["runs"]} == {"base", "dfm2", "dfm3", "flowar", "cascade", "pyramidal"}
    # the finished dfm3 run is collected, not trained or scored again
    assert dfm3_log.read_text() == before
    assert [x for x in r["runs"] if x["arm"] == "dfm3"][0] == part["runs"][0]
    for run in r["runs"]:
        assert [c["step"] for c in run["curve"]] == [2, 4]
        assert all(f["nfe"] == 8 and f["n"] == 20 for f in run["final"])
    assert set(r["step_time"]["ratio_to_base"]) == {"base", "dfm2", "dfm3", "flowar", "cascade", "pyramidal"}
    assert r["summary"]["base"]["fd_ratio_to_base_cfg1.0"] == 1.0
    assert all(row["sample_images_per_s_cfg1.0"] > 0 for row in r["summary"].values())
    # FlowAR's sampling cost: 8 head evaluations (2 on each of its 4 scales) and 4 cached AR passes per image
    assert r["summary"]["flowar"]["sample_cost"]["calls"] == {"AR transformer": 4, "flow head": 8}
    assert r["summary"]["flowar"]["sample_cost"]["gflop"] < r["summary"]["base"]["sample_cost"]["gflop"]
    assert (tmp_path / "quality_tiny.png").stat().st_size > 1000

    assert_one_line_error(run_cli(*args, "--arms", "dfm9", env=env), "unknown --arms ['dfm9']")

    # band scores of the final cfg-1 samples; a cached result made without them gets them
    # from the same samples again (same seed), so the values are reproduced exactly
    cached = dfm3_log.with_name("bench_result.json")
    saved = json.loads(cached.read_text())
    final1 = [f for f in saved["result"]["final"] if f["cfg"] == 1.0][0]
    bands = {k: final1.pop(k) for k in ("fd_coarse", "fine_rms_ratio")}
    assert bands["fd_coarse"] > 0 and bands["fine_rms_ratio"] > 0
    cached.write_text(json.dumps(saved))
    run_cli(*args, "--arms", "dfm3", env=env, check=0, timeout=600)
    again = json.loads(cached.read_text())
    assert {k: [f for f in again["result"]["final"] if f["cfg"] == 1.0][0][k] for k in bands} == bands
    assert dfm3_log.read_text() == before

    # further guidance scales on finished runs: scored once (2 is already a final scale) into
    # RUN/guidance.json, nothing retrained or rescored; the summary names each arm's best scale
    cached_before = cached.read_text()
    run_cli(*args, "--arms", "base", "dfm3", "--extra-cfg-scales", "3", "2", env=env, check=0, timeout=600)
    r = json.loads((tmp_path / "quality_tiny.json").read_text())
    dfm3 = [x for x in r["runs"] if x["arm"] == "dfm3"][0]
    assert [(g["cfg"], g["n"], g["nfe"]) for g in dfm3["guidance"]] == [(3.0, 20, 8)]
    fd_by_cfg = {f["cfg"]: f["fd"] for f in [*dfm3["final"], *dfm3["guidance"]]}
    assert fd_by_cfg[3.0] != fd_by_cfg[1.0]  # the scale really reaches the sampler
    row = r["summary"]["dfm3"]
    assert row["fd_by_cfg"] == {str(w): v for w, v in sorted(fd_by_cfg.items())}
    assert row["fd_best"] == {"cfg": min(fd_by_cfg, key=fd_by_cfg.get), "mean": min(fd_by_cfg.values())}
    assert row["fd_best_ratio_to_base"] == row["fd_best"]["mean"] / r["summary"]["base"]["fd_best"]["mean"]
    assert "fd_best" not in r["summary"]["dfm2"]  # no extra scale scored there
    assert dfm3_log.read_text() == before and cached.read_text() == cached_before
    guidance_file = dfm3_log.with_name("guidance.json")
    saved_guidance = guidance_file.read_text()
    run_cli(*args, "--collect", env=env, check=0, timeout=600)  # read back, not scored again
    r = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert [x for x in r["runs"] if x["arm"] == "dfm3"][0]["guidance"] == dfm3["guidance"]
    assert guidance_file.read_text() == saved_guidance

    # a further seed of an arm that trains one seed by default: only when named in --arms
    run_cli(*args, "--seeds", "0", "1", env=env, check=0, timeout=600)
    r = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert r["summary"]["base"]["seeds"] == [0, 1] and r["summary"]["dfm3"]["seeds"] == [0]
    assert not dfm3_log.parent.with_name("dfm3-seed1").exists()
    run_cli(*args, "--arms", "dfm3", "--seeds", "0", "1", env=env, check=0, timeout=600)
    r = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert r["summary"]["dfm3"]["seeds"] == [0, 1] and dfm3_log.read_text() == before
    assert (dfm3_log.parent.with_name("dfm3-seed1") / "bench_result.json").exists()

    # runs recorded in the result file whose directories are gone (made on another machine)
    # are kept from the file, marked, and not trained again
    for seed in (0, 1):
        shutil.rmtree(dfm3_log.parent.with_name(f"dfm3-seed{seed}"))
    run_cli(*args, "--seeds", "0", "1", env=env, check=0, timeout=600)
    again = json.loads((tmp_path / "quality_tiny.json").read_text())
    kept = [x for x in again["runs"] if x["arm"] == "dfm3"]
    assert [x["seed"] for x in kept] == [0, 1] and all("quality_tiny.json" in x["collected_from"] for x in kept)
    assert not dfm3_log.parent.exists()

    # --collect trains nothing (a seed 2 would otherwise train base, dfm2 and flowar) and keeps
    # the earlier file's step time, marked, instead of measuring or dropping it
    run_cli(*args, "--seeds", "0", "1", "2", "--collect", env=env, check=0, timeout=600)
    collected = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert not list(dfm3_log.parent.parent.glob("*-seed2"))
    assert {(x["arm"], x["seed"]) for x in collected["runs"]} == {(x["arm"], x["seed"]) for x in again["runs"]}
    assert collected["step_time"]["ratio_to_base"] == again["step_time"]["ratio_to_base"]
    assert "quality_tiny.json" in collected["step_time"]["collected_from"]


def test_demo_trains_samples_and_scores(tmp_path, quick_classifier_cache):
    env = cli_env(PROGFLOW_CACHE=str(quick_classifier_cache))
    out = tmp_path / "demo"
    p = run_cli("demo", "--steps", "2", "--n", "20", "--nfe", "2", "--out", out, env=env, check=0)
    assert "FD" in p.stdout and "class acc." in p.stdout
    scores = json.loads((out / "scores.json").read_text())
    assert scores["n"] == 20 and scores["fd"] > 0 and 0 <= scores["class_accuracy"] <= 1
    assert {"command", "machine", "date", "seed"} <= scores.keys() and scores["command"].startswith("progflow demo")
    from progflow.hardware import native_bf16

    # the precision: bf16 where the machine multiplies it natively, the same in the run's config
    assert scores["bf16"] is native_bf16() is json.loads((out / "config.json").read_text())["bf16"]
    assert set(scores["wall_minutes"]) == {"total", "training", "classifier", "sampling"}
    assert (out / "samples.png").exists()
    p = run_cli("eval", out / "samples.npz", env=env, check=0)
    assert json.loads(p.stdout)["fd"] == scores["fd"]  # eval is deterministic


def test_quality_results_of_each_dataset_and_size_are_kept_apart():
    from progflow.bench.quality import result_names

    names = {(d, size, tiny): result_names({"dataset": d, "size": size}, tiny)
             for d in ("fashion-mnist", "emoji") for size in ("xs", "s") for tiny in (False, True)}
    assert names["fashion-mnist", "xs", False] == ("bench-quality", "quality.json")  # the committed names
    assert names["fashion-mnist", "xs", True] == ("bench-quality-tiny", "quality_tiny.json")
    assert names["emoji", "s", False] == ("bench-quality-emoji-s", "quality_emoji_s.json")
    assert len({n[0] for n in names.values()}) == len({n[1] for n in names.values()}) == len(names)


def test_quality_summary_means_over_seeds_and_takes_the_best_guidance_all_seeds_have():
    from progflow.bench.quality_summary import summarize

    def run(arm, seed, final, guidance=()):
        return {"arm": arm, "seed": seed, "train_images_per_s_median": 100.0,
                "final": [{"cfg": w, "fd": fd, "class_accuracy": 0.5} for w, fd in final.items()],
                "guidance": [{"cfg": w, "fd": fd} for w, fd in guidance]}

    runs = [run("base", 0, {1.0: 10.0, 2.0: 14.0}, [(1.5, 6.0), (3.0, 30.0)]),
            run("base", 1, {1.0: 12.0, 2.0: 16.0}, [(1.5, 8.0)]),  # no cfg 3: it cannot be the best
            run("dfm2", 0, {1.0: 20.0, 2.0: 9.0}, [(3.0, 1.0)]),
            run("dfm2", 1, {1.0: 24.0, 2.0: 11.0})]
    out = summarize(runs, [1.0, 2.0])
    base, dfm = out["base"], out["dfm2"]
    assert base["seeds"] == [0, 1] and base["fd_cfg1.0"]["mean"] == 11.0 and base["fd_cfg1.0"]["values"] == [10.0, 12.0]
    assert abs(base["fd_cfg1.0"]["std"] - 2 ** 0.5) < 1e-12  # the sample std of two seeds
    assert base["fd_by_cfg"] == {"1.0": 11.0, "1.5": 7.0, "2.0": 15.0}  # cfg 3 ran for one seed only
    assert base["fd_best"] == {"cfg": 1.5, "mean": 7.0}
    assert dfm["fd_best"] == {"cfg": 2.0, "mean": 10.0}  # not seed 0's lone cfg 3
    assert dfm["fd_ratio_to_base_cfg1.0"] == 2.0 and dfm["fd_ratio_to_base_cfg2.0"] == 10.0 / 15.0
    assert dfm["fd_best_ratio_to_base"] == 10.0 / 7.0 and base["fd_best_ratio_to_base"] == 1.0

"""What ``progflow bench quality`` trains: its arms (the main methods, the training ablations and
the sampling-only variants), the datasets it runs on, its settings, and how an arm and a seed
become a :class:`~progflow.config.TrainConfig` and a runs folder. ``bench solvers`` reuses these
to train the same runs."""

from __future__ import annotations

from progflow.presets import preset_config

# arm name -> (preset pattern, training overrides)
ARMS = {
    "base": ("fmnist-base-{size}", {}),
    "dfm2": ("fmnist-dfm-{size}", {}),
    "dfm3": ("fmnist-dfm3-{size}", {}),
    "flowar": ("fmnist-flowar-{size}", {}),
    "cascade": ("fmnist-cascade-{size}", {}),
    "pyramidal": ("fmnist-pyramidal-{size}", {}),
}


# 2-stage DFM with one thing changed (the defaults: p_q [0.9, 0.1], earlier stages at
# logit-normal(1.5, 1), Laplacian pyramid, no standardisation)
TRAIN_ABLATIONS = {
    "dfm2-pq0.3": ("fmnist-dfm-{size}", {"method.stage_probs": [0.3, 0.7]}),
    "dfm2-pq0.5": ("fmnist-dfm-{size}", {"method.stage_probs": [0.5, 0.5]}),
    "dfm2-pq0.7": ("fmnist-dfm-{size}", {"method.stage_probs": [0.7, 0.3]}),
    "dfm2-std-pq0.7": ("fmnist-dfm-{size}", {"method.standardize": True, "method.stage_probs": [0.7, 0.3]}),
    "dfm2-loc0": ("fmnist-dfm-{size}", {"method.earlier_loc": 0.0}),
    "dfm2-std": ("fmnist-dfm-{size}", {"method.standardize": True}),
    "dfm2-std-pq0.3": ("fmnist-dfm-{size}", {"method.standardize": True, "method.stage_probs": [0.3, 0.7]}),
    "dfm2-tied": ("fmnist-dfm-{size}", {"method.tied_times": True}),
    "dfm2-haar": ("fmnist-dfm-{size}", {"method.decomposition": "haar", "model.stage_patches": [2, 2]}),
    # FlowAR with one thing changed (defaults: spatial adaLN, scales 1, 2, 4, 8)
    "flowar-adaln": ("fmnist-flowar-{size}", {"model.spatial_adaln": False}),
    "flowar-2scales": ("fmnist-flowar-{size}", {"method.scales": [2, 8]}),
    # compute moved from the AR transformer to the flow head (1 + 2 blocks instead of 2 + 1)
    "flowar-ar1-head2": ("fmnist-flowar-{size}", {"model.depth": 1, "model.head_depth": 2}),
}


# sampling-only variants of an arm's first-seed model: config overrides, "nfe" replaces the
# benchmark's NFE (DFM default: tau 0.7, 30 + 10 steps; FlowAR: 10 head steps per scale)
SAMPLE_ABLATIONS = {
    "dfm2": {
        "tau0.5": {"method.thresholds": [0.5]},
        "tau0.9": {"method.thresholds": [0.9]},
        "steps20+20": {"method.stage_steps": [20, 20]},
    },
    "flowar": {"steps25": {"nfe": 100}},  # 25 head steps per scale, as in the paper
}


# latent twins of arms (docs/latent.md): arm -> (preset pattern, the autoencoder preset whose
# latents it generates). Trained only when named in --arms. Every one gets the pixel base's
# training FLOPs: its steps and checkpoint spacing are scaled by base's forward FLOPs per image
# over its own (a 16x16x4 latent at patch 2 has a quarter of the pixel presets' tokens). The
# autoencoders train once per runs folder (their cost is reported apart, with eval-ae's scores).
LATENT_ARMS = {
    "base-latent": ("fmnist-latent-base-{size}", "emoji-ae"),
    "dfm2-latent": ("fmnist-latent-dfm-{size}", "emoji-ae"),
    "base-latent-eq": ("fmnist-latent-base-{size}", "emoji-ae-eq"),
    "dfm2-latent-eq": ("fmnist-latent-dfm-{size}", "emoji-ae-eq"),
    "flowar-latent": ("fmnist-latent-flowar-{size}", "emoji-ae"),
    "flowar-latent-eq": ("fmnist-latent-flowar-{size}", "emoji-ae-eq"),
}


# the datasets the benchmark runs on: preset prefix, the suffix of its result file and runs
# folder, the arms that have presets there (None: every arm), and the arms trained on every seed
DATASETS = {
    "fashion-mnist": {"prefix": "fmnist-", "tag": "", "arms": None, "title": "Fashion-MNIST 32px"},
    # the comparison at 64px: base vs 2-stage DFM with the paper's p_q and with the
    # best p_q of the Fashion-MNIST ablation, every one on every seed; FlowAR; and latent twins
    "emoji": {"prefix": "emoji-", "tag": "_emoji", "arms": ("base", "dfm2", "flowar", "dfm2-pq0.3"), "title": "emoji 64px",
              "latent_arms": tuple(LATENT_ARMS)},
}


FINAL_SEED = 200  # sampling seed of the final scores (the curve uses 100)


SEED_ARMS = ("base", "dfm2", "flowar", "cascade", "pyramidal")  # arms trained with every seed; others with the first seed only

def _settings(args) -> dict:
    tiny = args.tiny
    steps = args.steps or (4 if tiny else 3000)
    return {
        "size": getattr(args, "size", None) or "xs",
        "steps": steps,
        "batch_size": 8 if tiny else 64,
        "lr": 1e-3,
        "warmup": 1 if tiny else 100,
        "eval_every": args.eval_every or (2 if tiny else max(1, steps // 4)),
        "n": args.n or (20 if tiny else 2000),
        "n_curve": 20 if tiny else max(100, (args.n or 2000) // 4),
        "nfe": 8 if tiny else 40,  # tiny: enough for one head step on each of FlowAR's 5 emoji scales
        "cfg_scales": args.cfg_scales or [1.0, 2.0],
        "seeds": args.seeds or ([0] if tiny else [0, 1]),
        "ablations": not tiny,
        "solver": getattr(args, "solver", None) or "euler",
        "shift": getattr(args, "shift", None) or 1.0,
        "dataset": getattr(args, "dataset", None) or "fashion-mnist",
    }

def _sampler(s: dict) -> dict:
    """The solver and grid shift every FD of the benchmark samples with."""
    return {"solver": s["solver"], "shift": s["shift"]}

def _config(preset_pattern: str, overrides: dict, seed: int, s: dict, tiny: bool):
    name = preset_pattern.format(size=s["size"]).replace("fmnist-", DATASETS[s.get("dataset", "fashion-mnist")]["prefix"], 1)
    cfg = preset_config(name, steps=s["steps"], batch_size=s["batch_size"], seed=seed,
                        lr=s["lr"], warmup=s["warmup"], ckpt_every=s["eval_every"], keep_last=10_000, sample_every=0,
                        log_every=1 if tiny else 20)
    extra = dict(overrides)
    if tiny:
        extra.update({"data.dataset": "synthetic", "data.n": 64, "model.depth": 1})
    if cfg.method.name == "dfm" and "method.stage_steps" not in extra:
        extra["method.nfe"] = s["nfe"]
        extra["method.stage_steps"] = ()  # empty: re-derived from nfe (30 + 10 for 40)
    return cfg.with_overrides(extra) if extra else cfg

def _main_arms(s: dict) -> dict:
    """The main arms (:data:`ARMS`) that the benchmark's dataset has presets for."""
    have = DATASETS[s.get("dataset", "fashion-mnist")]["arms"]
    return {arm: v for arm, v in ARMS.items() if have is None or arm in have}

def result_names(s: dict, tiny: bool) -> tuple[str, str]:
    """``(runs folder, result file)`` of the settings ``s``: one per dataset and size (``xs``,
    the first, keeps the plain names), so that a run of one size or dataset never collects,
    overwrites or retrains another's."""
    tag = f"{DATASETS[s['dataset']]['tag']}{'' if s['size'] == 'xs' else '_' + s['size']}{'_tiny' if tiny else ''}"
    return f"bench-quality{tag}".replace("_", "-"), f"quality{tag}.json"



def autoencoder_config(preset: str, tiny: bool):
    """The config a latent arm's autoencoder trains with (tiny: seconds on synthetic data)."""
    cfg = preset_config(preset, seed=0, log_every=1 if tiny else 20)
    if tiny:
        cfg = cfg.with_overrides({"data.dataset": "synthetic", "data.n": 64, "model.width": 4, "steps": 2,
                                  "batch_size": 8, "warmup": 1})
    return cfg


def latent_overrides(arm: str, root, s: dict, tiny: bool) -> dict:
    """A latent arm's training overrides: its autoencoder's run folder, and steps and
    checkpoint spacing scaled to the pixel base's training FLOPs."""
    from progflow.info import training_flops
    from progflow.nn.dit import build_model

    pattern, ae = LATENT_ARMS[arm]
    flops = lambda cfg: training_flops(build_model(cfg).eval(), {})[0]  # noqa: E731 (forward FLOPs per image)
    ratio = flops(_config(ARMS["base"][0], {}, 0, s, tiny)) / flops(_config(pattern, {}, 0, s, tiny))
    return {"data.autoencoder": str(root / ae), "steps": max(1, round(s["steps"] * ratio)),
            "ckpt_every": max(1, round(s["eval_every"] * ratio))}

"""Does the emoji scoring classifier's FD respond to image quality? Scores 754 real training
emoji against the test split, then the same images degraded three ways (blurred through
16px, Gaussian noise, 8px blocks), with the packaged classifier and the evaluation code of
``progflow eval --dataset emoji``.

    python benchmarks/emoji_classifier_check.py   # -> benchmarks/results/emoji_classifier_check.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from progflow.results import result_header, write_result
from progflow.data.emoji import load_emoji
from progflow.eval.evaluate import evaluate_arrays, reference_set
from progflow.eval.features import get_extractor

SEED = 0


def main() -> Path:
    torch.set_num_threads(1)
    ext = get_extractor("emoji-classifier")
    ref, ref_labels = reference_set(ext, dataset="emoji")
    train = load_emoji(None, "train")
    idx = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(SEED))[: len(ref)]
    x, y = train.images[idx].float(), train.labels[idx].numpy()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED + 1))
    variants = {
        "real train images": x,
        "blurred (area to 16px, bilinear back)": F.interpolate(F.interpolate(x, size=16, mode="area"), size=64,
                                                               mode="bilinear", align_corners=False),
        "Gaussian noise, sigma 25/255": x + 25 * noise,
        "8px blocks (area to 8px, nearest back)": F.interpolate(F.interpolate(x, size=8, mode="area"), size=64,
                                                                mode="nearest"),
    }
    rows = []
    for name, v in variants.items():
        u8 = v.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        r = evaluate_arrays(u8, y, ext, ref, ref_labels=ref_labels, reference=f"emoji test ({len(ref)})")
        rows.append({"images": name, **{k: r[k] for k in ("n", "fd", "class_accuracy", "precision", "recall",
                                                          "density", "coverage")}})
        print(f"{name:40s} FD {r['fd']:7.2f}  class acc {r['class_accuracy']:.3f}", flush=True)
    out = Path(__file__).resolve().parent / "results" / "emoji_classifier_check.json"
    header = result_header(SEED)
    header["command"] = "python " + " ".join(["benchmarks/emoji_classifier_check.py", *sys.argv[1:]])
    return write_result({**header, "features": ext.name, "rows": rows}, out)


if __name__ == "__main__":
    print(main())

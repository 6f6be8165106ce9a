"""docs/tutorial.md runs: its commands, at a tiny budget, in order, as a user types them.

Also keeps the README's pictures and the docs honest: every Markdown image path resolves
to a committed file, and nothing points outside the project.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cli_env, run_torchrun

TUTORIAL = ROOT / "docs" / "tutorial.md"
# the tutorial's budget -> the test's (same commands, seconds instead of minutes)
TINY_VALUES = {"--steps": {"300": "4", "400": "6", "100": "2"}, "--ckpt-every": {"100": "2", "50": "1"},
               "--sample-every": {"100": "2", "0": "0"}, "--n": {"200": "20"}, "--nfe": {"20": "4"}}


def tutorial_blocks() -> list[tuple[list[str], str]]:
    """``(command argv, the output block shown after it)`` for every command of the page."""
    text = TUTORIAL.read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
    out = []
    for i, (lang, body) in enumerate(blocks):
        line = body.strip()
        if lang == "bash" and line.split()[0] in ("progflow", "torchrun"):
            shown = blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "" else ""
            out.append((shlex.split(line), shown))
    return out


def tiny(argv: list[str], tmp: Path) -> list[str]:
    out = []
    for k, a in enumerate(argv):
        prev = argv[k - 1] if k else ""
        if prev in TINY_VALUES:
            assert a in TINY_VALUES[prev], f"tutorial value {prev} {a} has no tiny twin in this test"
            a = TINY_VALUES[prev][a]
        out.append(a.replace("runs/", f"{tmp}/"))
    return out


def test_tutorial_commands_run_in_order(tmp_path):
    steps = tutorial_blocks()
    assert [a[:2] for a, _ in steps][:3] == [["progflow", "train"], ["progflow", "sample"], ["progflow", "eval"]]
    assert any(a[0] == "torchrun" for a, _ in steps) and any("--resume" in a for a, _ in steps)
    for argv, shown in steps:
        argv = tiny(argv, tmp_path)
        if argv[0] == "progflow":
            cmd = [sys.executable, "-m", "progflow.cli", *argv[1:], *(["--no-progress"] if argv[1] == "train" else [])]
            p = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600, cwd=ROOT)
            assert p.returncode == 0, f"{' '.join(argv)} failed:\n{p.stderr[-2000:]}"
        else:  # torchrun on a free port; the page's --nproc_per_node is kept
            p = run_torchrun(*argv[1:], "--no-progress", nproc=None)
        printed = [json.loads(x) for x in re.findall(r"^\{.*?^\}|^\{.*\}$", p.stdout, flags=re.S | re.M)]
        assert len(printed) == 1, f"{' '.join(argv)} printed {p.stdout!r}"
        got = printed[0]
        # the page shows the same keys the command prints (shortened pages elide with ...)
        shown_keys = set(re.findall(r'"(\w+)":', shown))
        assert shown_keys and shown_keys <= set(got), f"{' '.join(argv)}: page shows {shown_keys - set(got)} " \
                                                       f"that the command no longer prints"
        if "..." not in shown and shown.strip().startswith("{\n"):
            assert set(got) == shown_keys, f"{' '.join(argv)} now prints {set(got) - shown_keys} too"
    assert (tmp_path / "tut" / "s.npz").is_file() and any((tmp_path / "tut" / "s_previews").iterdir())
    assert (tmp_path / "tut" / "ckpt" / "step_00000006").is_dir()  # resumed past the first budget
    assert (tmp_path / "tut-ddp" / "ckpt" / "step_00000002").is_dir()


def test_markdown_images_resolve_and_nothing_points_outside():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    images = 0
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
            path = (page.parent / target).resolve()
            assert path.is_file(), f"{page.relative_to(ROOT)} shows {target}, which does not exist"
            tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT,
                                     capture_output=True).returncode == 0
            assert tracked, f"{target} in {page.relative_to(ROOT)} is not committed"
            assert path.stat().st_size < 1_000_000, f"{target} is over 1 MB"
            images += 1
        assert "shared/" not in text, f"{page.relative_to(ROOT)} points at shared/, which users do not have"
    assert images >= 3  # the README's demo grid, a DFM preview strip and the FD plot at least

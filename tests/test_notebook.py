"""notebooks/quickstart.ipynb runs top to bottom in a Jupyter kernel on a run this test made."""

import json
import os
import pathlib
import sys

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from tiny_run import make_run

import gpt2_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _kernel(tmp_path: pathlib.Path) -> KernelManager:
    """A kernel of this very interpreter that imports the same gpt2_jax as this test (whatever the
    kernels installed on the machine, or the venv's PATH, say)."""
    package_root = str(pathlib.Path(gpt2_jax.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    spec_dir = tmp_path / "kernels" / "gpt2-jax-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gpt2-jax test", "language": "python",
        "env": {"PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}}))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="gpt2-jax-test", kernel_spec_manager=specs)


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_quickstart_notebook_loads_samples_scores_and_plots(tmp_path):
    run = make_run(tmp_path / "run")
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f"RUN_DIR = {str(run)!r}"
    NotebookClient(nb, km=_kernel(tmp_path), timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    summary, sample, score, logits, curve = (_text(c) for c in code[1:])
    assert "124,736 params (float32)" in summary and "step 30 of" in summary
    assert sample.startswith("ROMEO:") and len(sample) > len("ROMEO:\n")
    assert "nats/token" in score and "bits/byte" in score
    assert "logits (1, 19, 257)" in logits
    assert "30 logged steps" in curve
    images = [o for o in code[-1].outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 1

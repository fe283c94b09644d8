"""notebooks/inspect.ipynb runs top to bottom in a Jupyter kernel on a run this test made, and draws
every picture."""

import pathlib
import subprocess

import nbformat
from test_notebook import _env, _text
from tiny_run import make_run

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_inspect_notebook_draws_every_picture(tmp_path):
    run = make_run(tmp_path / "run")
    nb = nbformat.read(ROOT / "notebooks" / "inspect.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f"RUN_DIR = {str(run)!r}\nTEXT = 'Shall I compare thee to a summer'"
    nbformat.write(nb, tmp_path / "inspect.ipynb")
    proc = subprocess.run(["jupyter", "execute", "inspect.ipynb", "--output=executed"], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    summary, numbers, _, _, lens, embed = (_text(c) for c in code[1:])
    assert "124,736 params" in summary
    assert "33 tokens; attention (2, 2, 33, 33)" in numbers and "residual stream (3, 33, 64)" in numbers
    assert "after 'S':" in numbers and "bits" in numbers
    assert "p(true next token) by layer: embed" in lens and "block 1" in lens
    assert embed.count("->") == 3
    images = [c for c in code if any(o.output_type == "display_data" and "image/png" in o.data for o in c.outputs)]
    assert len(images) == 4  # attention grid, entropy strip, logit lens, embedding scatter

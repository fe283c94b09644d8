"""The package layout holds: imports go down the layers of setup.cfg's import-linter contract,
every stage is declared there, and modules and stages stay small."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT_IMPORTS = pathlib.Path(sys.executable).parent / "lint-imports"


def _lint(package_parent: pathlib.Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "setup.cfg"), "--no-cache"],
                          cwd=package_parent, env=env, capture_output=True, text=True, timeout=120)


def _copy_package(tmp_path: pathlib.Path) -> pathlib.Path:
    shutil.copytree(ROOT / "gpt2_jax", tmp_path / "gpt2_jax", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "gpt2_jax"


def test_imports_follow_the_layers():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_an_upward_import_fails_with_its_path(tmp_path):
    pkg = _copy_package(tmp_path)
    with open(pkg / "model" / "flops.py", "a") as f:
        f.write("\nfrom gpt2_jax.train import steps  # model/ may not import train/\n")
    proc = _lint(tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "BROKEN" in proc.stdout and "gpt2_jax.model.flops -> gpt2_jax.train.steps" in proc.stdout


def test_a_sibling_import_fails(tmp_path):
    pkg = _copy_package(tmp_path)
    with open(pkg / "generate" / "decode.py", "a") as f:
        f.write("\nfrom gpt2_jax.evaluate import scoring  # independent stages of one layer\n")
    proc = _lint(tmp_path)
    assert proc.returncode == 1 and "gpt2_jax.generate.decode -> gpt2_jax.evaluate.scoring" in proc.stdout


def test_an_undeclared_stage_fails(tmp_path):
    pkg = _copy_package(tmp_path)
    (pkg / "newstage").mkdir()
    (pkg / "newstage" / "__init__.py").write_text('"""A stage nobody placed in the layers."""\n')
    proc = _lint(tmp_path)
    assert proc.returncode == 1 and "gpt2_jax.newstage" in proc.stdout


def test_modules_and_stages_stay_small():
    too_long = {str(p.relative_to(ROOT)): n for p in (ROOT / "gpt2_jax").rglob("*.py")
                if (n := len(p.read_text().splitlines())) > 400}
    assert not too_long, f"modules over 400 lines: {too_long}"
    for stage in (p for p in (ROOT / "gpt2_jax").iterdir() if (p / "__init__.py").is_file()):
        modules = [m for m in stage.glob("*.py") if m.name not in ("__init__.py", "__main__.py")]
        assert len(modules) <= 10, f"{stage.name}/ holds {len(modules)} modules"
        doc = (stage / "__init__.py").read_text()
        assert doc.startswith('"""') and "import" in doc.lower(), f"{stage.name}/__init__.py must say what it may import"

"""The repository's declarations agree with each other."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _environment_pip_requirements() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    indent = len(lines[start + 1]) - len(lines[start + 1].lstrip())
    reqs = []
    for line in lines[start + 1:]:
        if not line.strip() or len(line) - len(line.lstrip()) < indent:
            break
        reqs.append(line.strip()[2:].strip())
    return [r for r in reqs if r != "-e ."]


def _normalise(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_mirrors_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(map(_normalise, _environment_pip_requirements())) == sorted(map(_normalise, declared))


def test_torch_pins():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in declared and "torchvision==0.29.1" in declared


def test_core_imports_no_experiment_or_analysis_package():
    pattern = re.compile(r"^\s*(import|from)\s+(sacred|pymongo|pandas|seaborn|dask)\b", re.M)
    offenders = [p.name for p in (ROOT / "core").glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []

"""The repository's declarations agree with each other, and its packages keep their layers."""
import ast
import json
import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from core import provenance

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "ablations", "analysis", "benchmarks")


def _lock() -> dict[str, str]:
    """requirements.lock as {normalised name: version}."""
    pins = [line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_pyproject_states_ranges_and_the_lock_pins_versions_inside_them():
    lock = _lock()
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1" and lock["setuptools"].startswith("80.")
    for req in _declared():
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: pyproject.toml states ranges"
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in lock and req.specifier.contains(lock[name], prereleases=True), f"{req} vs lock {lock.get(name)}"
    assert all(line.count("==") == 1 for line in (ROOT / "requirements.lock").read_text().splitlines()
               if line.strip() and not line.startswith("#"))


def test_environment_yml_installs_the_lock():
    text = (ROOT / "environment.yml").read_text()
    assert "- python=3.11" in text and "- -r requirements.lock" in text and "- -e ." in text


def _imports(path: Path, package: str) -> set[str]:
    """Modules of this repository that a file imports, anywhere in it (a function-level import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # `from ablations import store` imports the module ablations.store
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").exists()}
    return {m for m in found if m.split(".")[0] in PACKAGES and m != package}


def _module_graph() -> dict[str, set[str]]:
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            graph[name] = _imports(path, package)
    return graph


def test_no_module_imports_a_module_that_imports_it_back():
    graph = _module_graph()

    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += graph.get(module, ())
        return seen

    circles = sorted(m for m in graph if m in reachable(m))
    assert circles == [], f"modules on an import circle: {circles}"
    assert "ablations.sync" in graph["ablations.store"] and "analysis.reproduce" in graph["analysis.audit"]


def test_layers_import_only_downward():
    graph = _module_graph()
    assert not {m for name, deps in graph.items() if name.startswith("core") for m in deps if not m.startswith("core")}
    assert not {m for name, deps in graph.items() if name.startswith("ablations") for m in deps
                if m.startswith(("analysis", "benchmarks"))}
    pattern = re.compile(r"^\s*(import|from)\s+(sacred|pymongo|pandas|seaborn|dask)\b", re.M)
    assert [p.name for p in (ROOT / "core").glob("*.py") if pattern.search(p.read_text())] == []


def test_the_repository_describes_itself():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    texts = {f: (ROOT / f).read_text(errors="replace") for f in tracked
             if f.endswith((".py", ".md", ".toml", ".yml", ".lock")) or f == "Makefile"}
    assert [f for f, text in texts.items() if "../" + "shared" in text] == []
    assert [f for f, text in texts.items() if f.endswith(".py") and "sys.path." + "insert" in text] == []
    assert "## Layout" in texts["README.md"]


def test_a_new_python_file_that_git_does_not_ignore_makes_the_tree_dirty(tmp_path):
    """A run may import a module no commit holds; an ignored or non-Python file cannot change what runs."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text("runs/\n")
    subprocess.run([*git, "add", ".gitignore"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], cwd=tmp_path, check=True)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "scratch.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert provenance.git_state(tmp_path)["changed"] == []
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "new_module.py").write_text("")
    assert provenance.git_state(tmp_path) | {"commit": None} == {"commit": None, "dirty": True,
                                                                 "changed": ["core/new_module.py"]}


def test_a_copy_without_git_records_the_commit_and_what_differs_from_it(tmp_path, monkeypatch):
    """A GPU machine gets the files without .git: a snapshot written here lets its runs record the commit."""
    snapshot = provenance.git_snapshot(ROOT)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert snapshot["commit"] == head and "core/config.py" in snapshot["blobs"]
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None, "changed": None}
    (tmp_path / "snapshot.json").write_text(json.dumps(snapshot))
    monkeypatch.setenv(provenance.GIT_SNAPSHOT_ENV, str(tmp_path / "snapshot.json"))
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": False, "changed": []}
    with open(tmp_path / "core" / "config.py", "a") as changed:
        changed.write("\n")
    (tmp_path / "README.md").unlink()
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": True, "changed": ["README.md", "core/config.py"]}
    # a copy that carries a .git of another commit is still checked against the snapshot it was sent with
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "stale"],
                   cwd=tmp_path, check=True)
    assert provenance.git_state(tmp_path)["commit"] == head

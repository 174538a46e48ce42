"""The import rules of pyproject.toml's [tool.importlinter] contracts hold (README, "Layout")."""

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_are_kept(monkeypatch):
    monkeypatch.chdir(ROOT)  # the contracts and the package are read from the repository
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0

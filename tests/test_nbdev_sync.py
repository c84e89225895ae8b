"""The package must be what the notebooks export, and the notebooks must be clean.

Runs nbdev-export and nbdev-clean on a copy of the repository (so the working tree is never touched) and fails,
naming the files, if either would change anything."""
import json, re, shutil, subprocess
from pathlib import Path
from conftest import ROOT, tool

def _snapshot(d: Path):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob('*'))
            if p.is_file() and '__pycache__' not in p.parts and p.suffix in ('.py', '.ipynb')}

def _copy(tmp_path):
    dst = tmp_path / 'repo'
    dst.mkdir()
    for name in ('nbs', 'medsynth'): shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('pyproject.toml', 'README.md'):
        if (ROOT / name).exists(): shutil.copy(ROOT / name, dst / name)
    return dst

def test_export_changes_nothing(tmp_path):
    repo = _copy(tmp_path)
    before = _snapshot(repo / 'medsynth')
    subprocess.run([tool('nbdev-export')], cwd=repo, check=True, capture_output=True, timeout=300)
    after = _snapshot(repo / 'medsynth')
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"nbdev-export would change {changed}: edit the notebooks, run nbdev-export, and commit medsynth/"

def test_notebooks_are_clean(tmp_path):
    repo = _copy(tmp_path)
    before = _snapshot(repo / 'nbs')
    subprocess.run([tool('nbdev-clean')], cwd=repo, check=True, capture_output=True, timeout=300)
    after = _snapshot(repo / 'nbs')
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert not changed, f"nbdev-clean would change {changed}: run nbdev-clean and commit the notebooks"

def test_every_module_has_a_notebook():
    exported = {p.stem for p in (ROOT / 'medsynth').glob('*.py') if not p.stem.startswith('_')}
    cells = [c for nb in (ROOT / 'nbs').glob('*.ipynb') for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']
    sources = {m for c in cells for m in re.findall(r'^#\| default_exp (\S+)', ''.join(c['source']), re.M)}
    assert exported <= sources, f"modules without a notebook: {sorted(exported - sources)}"

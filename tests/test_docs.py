"""The docs configuration, checked without Quarto (it cannot be installed offline here): what `nbdev-docs` reads must be
consistent, so that the site builds where Quarto exists."""
import tomllib
import yaml
from conftest import ROOT

NBS = ROOT/'nbs'

def test_quarto_config_and_sidebar_cover_every_notebook():
    q = yaml.safe_load((NBS/'_quarto.yml').read_text())
    assert q['project']['type'] == 'website'
    for f in q['metadata-files']: assert (NBS/f).exists() or f == 'nbdev.yml', f        # nbdev.yml is written by nbdev-docs itself
    side = yaml.safe_load((NBS/'sidebar.yml').read_text())['website']['sidebar']['contents']
    listed = []
    for e in side: listed += e['contents'] if isinstance(e, dict) else [e]
    assert len(listed) == len(set(listed)), 'a page is listed twice'
    for f in listed: assert (NBS/f).exists(), f"sidebar.yml lists {f}, which does not exist"
    pages = {p.relative_to(NBS).as_posix() for p in NBS.rglob('*.ipynb') if not p.name.startswith('_')     # guides/ too
             and '.ipynb_checkpoints' not in p.parts}
    assert pages == set(listed), f"notebooks missing from sidebar.yml: {sorted(pages - set(listed))}"

def test_nbdev_settings_for_docs():
    cfg = tomllib.loads((ROOT/'pyproject.toml').read_text())['tool']['nbdev']
    assert cfg.get('custom_sidebar') is True, 'sidebar.yml is hand-written: custom_sidebar must be true'
    assert cfg.get('nbs_path', 'nbs') == 'nbs' and cfg.get('doc_path', '_docs')
    assert 'tags' in cfg.get('allowed_cell_metadata_keys', []), "nbdev-clean must keep papermill's parameters tag"
    for nb in (ROOT/'papers').glob('*.ipynb'):
        import nbformat
        cells = [c for c in nbformat.read(str(nb), as_version=4).cells if 'parameters' in c.metadata.get('tags', [])]
        assert len(cells) == 1, f"{nb.name}: needs exactly one cell tagged parameters"

"README.md is generated from nbs/index.ipynb and keeps the two set-up commands."
import re, sys
from conftest import ROOT
sys.path.insert(0, str(ROOT / 'tools'))
from nb2readme import render

def test_readme_is_generated_from_index():
    assert (ROOT / 'README.md').read_text() == render(), "README.md is stale: run `make readme` and commit it"

def test_readme_commands_exist_in_makefile():
    readme, makefile = (ROOT / 'README.md').read_text(), (ROOT / 'Makefile').read_text()
    for target in ('demo', 'test'):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no '{target}' target"
    ci = (ROOT / '.ci' / 'run').read_text()
    assert 'make test' in ci

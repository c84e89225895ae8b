"The tree shows the layers: a module imports only from its own layer and the ones below, at the top of the module."
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1]/'medsynth'
LAYERS = ['core', 'diffusion', 'spaces', 'data', 'models', 'training', 'evaluation', 'systems', 'app']   # lowest first
DEFERRED = '# deferred:'                 # an import inside a function that waits for the command needing torch (the CLI)
PLUGIN = '# PDS in the trainer:'         # the known exception, until PDS plugs into the trainer like any system
MODULES = sorted(p for p in PKG.rglob('*.py') if p.name not in ('__init__.py', '_modidx.py') and p.parent != PKG)

def medsynth_imports(path):
    "`(layer, line, inside a function, source line)` of every import of a medsynth module in `path`."
    text = path.read_text(); lines = text.splitlines(); tree = ast.parse(text); top = {id(n) for n in tree.body}
    pkg = path.relative_to(PKG).parts[:-1]
    for n in ast.walk(tree):
        if not isinstance(n, ast.ImportFrom): continue
        if n.level: parts = list(pkg)[:len(pkg) - n.level + 1] + (n.module or '').split('.')
        elif (n.module or '').startswith('medsynth.'): parts = n.module.split('.')[1:]
        else: continue
        above = lines[n.lineno - 2].strip() if n.lineno > 1 and lines[n.lineno - 2].strip().startswith('#') else ''
        yield parts[0], n.lineno, id(n) not in top, f"{above} {lines[n.lineno - 1].strip()}"   # the reason: above or beside

def test_every_module_sits_in_a_layer():
    assert {p.relative_to(PKG).parts[0] for p in MODULES} == set(LAYERS)

@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down_and_sit_at_the_top(path):
    me = path.relative_to(PKG).parts[0]
    for layer, line, inside, text in medsynth_imports(path):
        where = f"{path.relative_to(PKG.parent)}:{line}: {text.strip()}"
        if LAYERS.index(layer) > LAYERS.index(me): assert PLUGIN in text, f"imports a higher layer ({layer}): {where}"
        if inside: assert DEFERRED in text or PLUGIN in text, f"an import inside a function, without saying why: {where}"

def test_the_known_exception_stays_small():
    "The trainer reaches into systems.pds in a few marked places; nothing else may join them."
    marked = [(p.name, line) for p in MODULES for layer, line, _, text in medsynth_imports(p) if PLUGIN in text]
    assert {p.parent.name for p in MODULES if any(PLUGIN in t for *_, t in medsynth_imports(p))} <= {'training'}
    assert len(marked) <= 9, marked

def test_the_house_is_tidy():
    "No exported line over 120 characters, one statement per line, no module far over 400 lines (`tools/house.py`)."
    import sys
    sys.path.insert(0, str(PKG.parent/'tools'))
    from house import numbers
    n = numbers(PKG)
    assert (n['lines_over_120'], n['lines_with_several_statements']) == (0, 0), n
    big = {str(p.relative_to(PKG)): len(p.read_text().splitlines()) for p in MODULES}
    assert all(v <= 420 for v in big.values()), {k: v for k, v in big.items() if v > 420}

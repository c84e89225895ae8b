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
        yield parts[0], n.lineno, id(n) not in top, lines[n.lineno - 1]

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

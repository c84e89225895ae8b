"The tree shows the layers: a module imports only from its own layer and the ones below, at the top of the module."
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1]/'medsynth'
LAYERS = ['core', 'diffusion', 'spaces', 'data', 'models', 'training', 'evaluation', 'systems', 'app']   # lowest first
DEFERRED = '# deferred:'                 # an import inside a function that waits for the command needing torch (the CLI)
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
        assert LAYERS.index(layer) <= LAYERS.index(me), f"imports a higher layer ({layer}): {where}"
        if inside: assert DEFERRED in text, f"an import inside a function, without saying why: {where}"

# the published systems' names, as code, comments and docs would spell them
SYSTEM_WORDS = r"'pair'|\bpds\b|refine|stage.?1|\broi\b|atlas|cascade|pyramid|\brepa|\bm2d\b|mgdm|multiscale|classifier"

def test_the_trainer_knows_no_system():
    "training/ names no published system, and reads none of their config keys: they plug in through training.system."
    import re
    from medsynth.training.system import systems
    hits = [f"{p.name}:{i}: {l.strip()}" for p in (PKG/'training').glob('*.py') if p.name != '__init__.py'
            for i, l in enumerate(p.read_text().splitlines(), 1) if re.search(SYSTEM_WORDS, l, re.I)]
    assert hits == [], hits
    keys = {f for s in systems() if s.keys is not None for f in s.keys.__dataclass_fields__}
    used = [f"{p.name}:{n.lineno}: .{n.attr}" for p in (PKG/'training').glob('*.py')
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Attribute) and n.attr in keys]
    assert used == [], used

def test_the_built_in_systems_are_registered():
    "pyproject.toml's entry points register every System the systems layer defines."
    import importlib, inspect
    from medsynth.training.system import System, systems
    defined = {c for p in (PKG/'systems').glob('*.py') if p.name != '__init__.py'
               for _, c in inspect.getmembers(importlib.import_module(f'medsynth.systems.{p.stem}'), inspect.isclass)
               if issubclass(c, System) and c is not System}
    assert defined == {type(s) for s in systems() if type(s).__module__.startswith('medsynth.')}, defined

def test_the_house_is_tidy():
    "No exported line over 120 characters, one statement per line, no module far over 400 lines (`tools/house.py`)."
    import sys
    sys.path.insert(0, str(PKG.parent/'tools'))
    from house import numbers
    n = numbers(PKG)
    assert (n['lines_over_120'], n['lines_with_several_statements']) == (0, 0), n
    big = {str(p.relative_to(PKG)): len(p.read_text().splitlines()) for p in MODULES}
    assert all(v <= 420 for v in big.values()), {k: v for k, v in big.items() if v > 420}

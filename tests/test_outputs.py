"""The library notebooks are committed with their outputs (`make outputs`, tools/outputs.py), and those outputs are
fit to read: a cell that draws shows its figure, a cell that prints shows what it printed, and nothing saved holds a
traceback, a progress-bar frame, a warning, a colour code, an absolute path or a memory address. A notebook edited
after `make outputs` fails here once a new drawing or printing cell has no output: re-run `make outputs`."""
import ast, base64, json, re, tomllib
import pytest
from conftest import ROOT

NBS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb') if not p.name.startswith('_') and '.ipynb_checkpoints' not in p.parts)
FIX = 'run `make outputs` (tools/outputs.py) and commit the notebooks'
# Calls that put a figure on screen; files written by savefig/close are not inline figures.
DRAW = {'subplots', 'figure', 'imshow', 'show', 'show_image', 'show_images', 'show_batch'}
TO_FILE = {'savefig', 'close'}
MAX_IMAGE, MAX_TOTAL = 160_000, 4_000_000      # bytes of PNG per figure, of all outputs together
BAD = {'a traceback': re.compile(r'Traceback \(most recent call last\)'),
       'a progress-bar frame (\\r)': re.compile(r'\r'),
       'a colour code': re.compile(r'\x1b\['),
       'an absolute path': re.compile(r'(?<![\w.])/(?:tmp|work|root|home|Users|private|var/folders|opt)/'),
       'a memory address': re.compile(r'\bat 0x[0-9a-fA-F]{6,}'),
       "a dependency's warning": re.compile(r'\.py:\d+: \w*Warning: ')}     # a notebook may show medsynth's own

SKIP = set(tomllib.loads((ROOT/'pyproject.toml').read_text())['tool']['nbdev'].get('tst_flags', '').split())

def _runs(c) -> bool:
    "Whether nbdev-test (and so `make outputs`) runs this cell: not `#| eval: false`, not a flagged (slow, gpu) cell."
    ds = [l.strip()[2:].strip() for l in c['source'] if l.strip().startswith('#|')]
    return not any(d.replace(' ', '') == 'eval:false' or d in SKIP for d in ds)

def _cells(nb):
    return [c for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code' and _runs(c)]

def _top_calls(src:str) -> set:
    "Names called by a cell's own top-level code (not inside the functions or classes it defines); directives dropped."
    try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return set()
    out, todo = set(), [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)): continue
        if isinstance(n, ast.Call):
            f = n.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', ''))
        todo += list(ast.iter_child_nodes(n))
    return out

def _draws(src:str) -> bool:
    calls = _top_calls(src)
    return bool(calls & DRAW or any(c.startswith('plot_') for c in calls)) and not calls & TO_FILE

def _prints(src:str) -> bool:
    "A top-level `print(...)` statement always writes to stdout."
    try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return False
    return any(isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and getattr(n.value.func, 'id', '') == 'print'
               and not any(k.arg == 'file' for k in n.value.keywords) for n in tree.body)

def _texts(out):
    if out['output_type'] == 'stream': yield ''.join(out['text'])
    elif out['output_type'] == 'error': yield '\n'.join(out['traceback'])
    else:
        for k, v in out.get('data', {}).items():
            if k.startswith('text/') or k == 'application/json': yield v if isinstance(v, str) else ''.join(map(str, v))

def _where(nb, c): return f"{nb.relative_to(ROOT)} cell {c.get('id')} ({''.join(c['source']).splitlines()[0][:50]!r})"

def test_rules_see_figures_and_prints():
    assert _draws("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])")
    assert _draws("plot_schedules(xs)") and not _draws("def f():\n    plt.imshow(x)")
    assert not _draws("fig, ax = plt.subplots(); fig.savefig('a.png')")
    assert not _runs({'source': ['#| slow\n', 'print(1)']}) and _runs({'source': ['#| hide\n', 'print(1)']})
    assert _prints("x = 1\nprint(x)") and not _prints("if x: print(x)") and not _prints("def f(): print(1)")

@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.relative_to(ROOT/'nbs').as_posix())
def test_outputs_kept(nb):
    errs = []
    for c in _cells(nb):
        src, outs = ''.join(c['source']), c.get('outputs', [])
        if _draws(src) and not any('image/png' in o.get('data', {}) for o in outs):
            errs.append(f"{_where(nb, c)} draws a figure but has no image/png output")
        if _prints(src) and not any(o['output_type'] == 'stream' and o['name'] == 'stdout' for o in outs):
            errs.append(f"{_where(nb, c)} prints but has no saved output")
        for o in outs:
            if o['output_type'] == 'error': errs.append(f"{_where(nb, c)} holds an error: {o.get('ename')}")
            for text in _texts(o):
                for what, rx in BAD.items():
                    if m := rx.search(text): errs.append(f"{_where(nb, c)} holds {what}: {text[max(0, m.start() - 30):m.end() + 30]!r}")
            for k, v in o.get('data', {}).items():
                if k.startswith('image/') and k != 'image/png': errs.append(f"{_where(nb, c)} keeps {k}: figures are PNG")
                if k == 'image/png' and len(base64.b64decode(''.join(v))) > MAX_IMAGE:
                    errs.append(f"{_where(nb, c)}: a {len(base64.b64decode(''.join(v))) // 1000} kB figure (> {MAX_IMAGE // 1000} kB)")
    assert not errs, '\n'.join(errs[:20]) + f'\n-> {FIX}'

def outputs_size(nbs=NBS) -> dict:
    "Bytes the saved outputs add to the notebooks' JSON, and the number of PNG figures."
    size = figs = 0
    for nb in nbs:
        for c in _cells(nb):
            size += sum(len(json.dumps(o)) for o in c.get('outputs', []))
            figs += sum('image/png' in o.get('data', {}) for o in c.get('outputs', []))
    return dict(bytes=size, figures=figs, notebooks=len(nbs))

def test_outputs_size():
    s = outputs_size()
    print(f"outputs: {s['bytes'] / 1e6:.2f} MB, {s['figures']} figures in {s['notebooks']} notebooks")
    assert s['figures'] > 0, f'no notebook keeps a figure: {FIX}'
    assert s['bytes'] < MAX_TOTAL, f"outputs take {s['bytes'] / 1e6:.1f} MB (> {MAX_TOTAL / 1e6:.0f} MB): shrink figures or prints"

"""The house in numbers: modules, the largest, lines over 120 characters, statements sharing a line, imports inside
functions. `python tools/house.py [PKG]` (default medsynth/). `_modidx.py` is left out; the `__all__` lists that
nbdev writes (wrapped at its own width, 120 to 160) are counted apart, as nbdev_all_lines_over_120."""
import ast, sys
from pathlib import Path

def _generated(tree) -> set:
    "Line numbers of the `__all__ = [...]` statements nbdev writes."
    return {i for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in n.targets)
            for i in range(n.lineno, n.end_lineno + 1)}

def numbers(pkg:Path) -> dict:
    files = sorted(p for p in pkg.rglob('*.py') if p.name != '_modidx.py')
    mods = [p for p in files if p.name != '__init__.py']
    size = {str(p.relative_to(pkg.parent)): len(p.read_text().splitlines()) for p in mods}
    long = generated = local = several = 0
    for p in files:
        text = p.read_text(); tree = ast.parse(text); top = {id(n) for n in tree.body}; gen = _generated(tree)
        over = [i for i, l in enumerate(text.splitlines(), 1) if len(l) > 120]
        long += sum(i not in gen for i in over)
        generated += sum(i in gen for i in over)
        local += sum(isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top and 'medsynth' in ast.unparse(n) or
                     isinstance(n, ast.ImportFrom) and n.level > 0 and id(n) not in top for n in ast.walk(tree))
        starts = {}
        for n in ast.walk(tree):
            if isinstance(n, ast.stmt): starts[n.lineno] = starts.get(n.lineno, 0) + 1
        several += sum(k > 1 for k in starts.values())   # `a; b`, `if x: y`, `def f(): return y`
    big = max(size, key=size.get)
    return dict(modules=len(mods), largest=f'{big} ({size[big]} lines)', over_400=sum(v > 400 for v in size.values()),
                lines_over_120=long, nbdev_all_lines_over_120=generated, lines_with_several_statements=several, function_local_medsynth_imports=local)

if __name__ == '__main__':
    for k, v in numbers(Path(sys.argv[1] if len(sys.argv) > 1 else 'medsynth')).items(): print(f'{k}: {v}')

"""The house in numbers: modules, the largest, lines over 120 characters, statements sharing a line, imports inside
functions. `python tools/house.py [PKG]` (default medsynth/; the generated _modidx.py is left out)."""
import ast, sys
from pathlib import Path

def numbers(pkg:Path) -> dict:
    mods = sorted(p for p in pkg.rglob('*.py') if p.name != '_modidx.py' and not (p.name == '__init__.py' and p.stat().st_size < 400))
    size = {str(p.relative_to(pkg.parent)): len(p.read_text().splitlines()) for p in mods}
    long = sum(len(l) > 120 for p in mods for l in p.read_text().splitlines())
    local = several = 0
    for p in mods:
        tree = ast.parse(p.read_text()); top = {id(n) for n in tree.body}
        local += sum(isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top and 'medsynth' in ast.unparse(n) or
                     isinstance(n, ast.ImportFrom) and n.level > 0 and id(n) not in top for n in ast.walk(tree))
        starts = {}
        for n in ast.walk(tree):
            if isinstance(n, ast.stmt): starts[n.lineno] = starts.get(n.lineno, 0) + 1
        several += sum(k > 1 for k in starts.values())   # `a; b`, `if x: y`, `def f(): return y`
    big = max(size, key=size.get)
    return dict(modules=len(mods), largest=f'{big} ({size[big]} lines)', over_400=sum(v > 400 for v in size.values()),
                lines_over_120=long, lines_with_several_statements=several, function_local_medsynth_imports=local)

if __name__ == '__main__':
    for k, v in numbers(Path(sys.argv[1] if len(sys.argv) > 1 else 'medsynth')).items(): print(f'{k}: {v}')

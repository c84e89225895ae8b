"""requirements.lock pins what pyproject.toml allows, and the venv holds what the lock pins.

pyproject.toml keeps the ranges library users need; requirements.lock (written by `make lock` with pip-compile) is the
exact, hashed set that `make` installs, so an environment a test passed in can be rebuilt. These tests fail when the two
drift apart (pyproject.toml edited without re-locking) or when the venv is stale (the lock changed, the venv did not).

Run as a script (`python tests/test_lock.py`) it prints the header line `make lock` writes at the top of the lock."""
import hashlib, json, re, sys, tomllib
from importlib import metadata
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / 'pyproject.toml'
LOCK = ROOT / 'requirements.lock'
DIGEST_KEY = 'pyproject-deps-sha256'
RELOCK = 'run `make lock`'

def dependency_lists(pyproject=PYPROJECT):
    "The requirement lists the lock is compiled from: build-system requires, dependencies and the `dev` extra."
    d = tomllib.loads(Path(pyproject).read_text())
    return {'build-system': d['build-system']['requires'],
            'dependencies': d['project']['dependencies'],
            'dev': d['project'].get('optional-dependencies', {}).get('dev', [])}

def normal_form(req: str) -> str:
    "One spelling per requirement (canonical name, sorted extras and specifiers), so formatting edits do not count."
    r = Requirement(req)
    extras = f"[{','.join(sorted(canonicalize_name(e) for e in r.extras))}]" if r.extras else ''
    spec = ','.join(sorted(str(s) for s in r.specifier))
    marker = f";{r.marker}" if r.marker else ''
    return f"{canonicalize_name(r.name)}{extras}{spec}{marker}"

def dependency_digest(pyproject=PYPROJECT) -> str:
    "SHA-256 of the normalised dependency lists: it changes exactly when the lock's inputs change."
    lists = {k: sorted(normal_form(r) for r in v) for k, v in dependency_lists(pyproject).items()}
    return hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()

def header_line(pyproject=PYPROJECT) -> str: return f"# {DIGEST_KEY}: {dependency_digest(pyproject)}"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")

def read_lock(lock=LOCK):
    "(recorded digest or None, {canonical name: version}, names pinned without a hash) from a pip-compile lock."
    text = Path(lock).read_text()
    m = re.search(rf"^# {DIGEST_KEY}: ([0-9a-f]{{64}})$", text, re.M)
    pins, unhashed, current = {}, [], None
    for line in text.splitlines():
        pin = _PIN.match(line)
        if pin:
            current = canonicalize_name(pin.group(1))
            pins[current] = pin.group(2)
            if '--hash=' not in line: unhashed.append(current)
        elif current and line.strip().startswith('--hash='):
            if current in unhashed: unhashed.remove(current)
    return (m.group(1) if m else None), pins, unhashed

def lock_problems(pyproject=PYPROJECT, lock=LOCK):
    "One line per way the lock disagrees with pyproject.toml; empty when they agree."
    if not Path(lock).exists(): return [f"{Path(lock).name} is missing: {RELOCK}"]
    digest, pins, unhashed = read_lock(lock)
    problems = []
    if digest is None: problems.append(f"{Path(lock).name} has no '# {DIGEST_KEY}:' header: {RELOCK}")
    elif digest != dependency_digest(pyproject):
        problems.append(f"{Path(lock).name} is stale: pyproject.toml's dependency lists changed since; {RELOCK}")
    for group, reqs in dependency_lists(pyproject).items():
        for req in reqs:
            r = Requirement(req)
            if r.marker and not r.marker.evaluate({'extra': ''}): continue
            name = canonicalize_name(r.name)
            if name not in pins:
                problems.append(f"{r.name} ({group} in pyproject.toml) is not pinned in {Path(lock).name}: {RELOCK}")
            elif not r.specifier.contains(Version(pins[name]), prereleases=True):
                problems.append(f"{Path(lock).name} pins {name}=={pins[name]}, outside pyproject's '{req}': {RELOCK}")
    if unhashed: problems.append(f"{Path(lock).name} has pins without hashes ({', '.join(unhashed)}): {RELOCK}")
    return problems

def installed_problems(lock=LOCK):
    "One line per locked package the running environment lacks or holds at another version."
    _, pins, _ = read_lock(lock)
    problems = []
    for name, version in sorted(pins.items()):
        try: have = metadata.version(name)
        except metadata.PackageNotFoundError: have = None
        if have is None or Version(have) != Version(version):
            problems.append(f"{name}: locked {version}, installed {have}")
    return problems

def test_lock_matches_pyproject():
    problems = lock_problems()
    assert not problems, '; '.join(problems)

def test_venv_matches_lock():
    assert LOCK.exists(), f"{LOCK.name} is missing: {RELOCK}"
    problems = installed_problems()
    assert not problems, (f"{sys.prefix} differs from {LOCK.name} ({'; '.join(problems[:5])}"
                          f"{'; ...' if len(problems) > 5 else ''}): run `make install` "
                          "(`make clean-venv install` after a manual pip change)")

def _ranged_requirement():
    "A dependency written as `name>=version` in pyproject.toml, to edit in copies of it."
    req = next(r for r in dependency_lists()['dependencies'] if re.fullmatch(r'[A-Za-z0-9._-]+>=[0-9.]+', r))
    assert f'"{req}"' in PYPROJECT.read_text(), req
    return req

def test_digest_ignores_formatting_and_follows_ranges(tmp_path):
    text, req = PYPROJECT.read_text(), _ranged_requirement()
    name, low = req.split('>=')
    reformatted = tmp_path / 'reformatted.toml'
    reformatted.write_text(text.replace(f'"{req}"', f'"{name.upper()} >= {low}"'))
    assert dependency_digest(reformatted) == dependency_digest()
    widened = tmp_path / 'widened.toml'
    widened.write_text(text.replace(f'"{req}"', f'"{name}>=0"'))
    assert dependency_digest(widened) != dependency_digest()

def test_editing_pyproject_without_relocking_fails(tmp_path):
    "The checks above can fail: a new dependency, a tightened range and a hand-edited pin are each reported."
    text, req = PYPROJECT.read_text(), _ranged_requirement()
    name = canonicalize_name(req.split('>=')[0])
    lock = tmp_path / LOCK.name
    lock.write_text(LOCK.read_text() if LOCK.exists() else '')
    added = tmp_path / 'added.toml'
    added.write_text(text.replace(f'"{req}",', f'"{req}",\n    "not-a-locked-package>=1",'))
    problems = lock_problems(added, lock)
    assert any('is stale' in p and RELOCK in p for p in problems), problems
    assert any('not-a-locked-package' in p and RELOCK in p for p in problems), problems
    _, pins, _ = read_lock(lock)
    tightened = tmp_path / 'tightened.toml'
    tightened.write_text(text.replace(f'"{req}"', f'"{name}>{pins.get(name, "0")}"'))
    assert any('outside' in p and name in p for p in lock_problems(tightened, lock)), lock_problems(tightened, lock)
    lock.write_text(re.sub(rf'^{name}==\S+', f'{name}==0.0.1', lock.read_text(), flags=re.M))
    assert any(p.startswith(f'{name}:') for p in installed_problems(lock))

if __name__ == '__main__': print(header_line(sys.argv[1] if len(sys.argv) > 1 else PYPROJECT))

"""Every command in the README's ```sh blocks, run in order as a user types it, in a pseudo-terminal.

The README is the contract users read, so its commands are tests: each line of a ```sh block runs through bash in a
pseudo-terminal (`os.openpty`: stdout is a tty, so progress bars are drawn as a user sees them), in one empty working
folder that every command shares (later commands use earlier ones' outputs: `runs/dual` is trained before it is
sampled), with the virtual environment on PATH (what `. .venv/bin/activate` does). A command fails on a non-zero exit
or a Python traceback in its output; the failure shows the command and the output's tail.

What the user brings stands at the paths the README names, written here before the first command: phantom class and
subject folders (`isic/`, `pairs/`, `held-out/`, `samples/`, `train/`), a phantom atlas, and small files of the real
formats (an autoencoder `ae.pt`, a domain `encoder.pt`, torch-fidelity's Inception weights file with random weights).
`grid.yaml` holds what the README's comment says it holds.

The README itself states every change the test makes, in a `# tests:` line under the command (nothing else is edited):

    # tests: EDIT ... [; why]     size=[16,16] (a config key), --n 4 (a flag's values), -p epochs 1 (a paper parameter)
                                  replace that setting or, where the command lacks it, add it; OLD -> NEW replaces a word
    # tests: as COMMAND [; why]   run COMMAND instead (`make demo`: the command the target runs, on a short budget)
    # tests: not run; why         (`make test`: it runs this file; `.ci/run` runs `make test`)

`--slurm` commands submit to a real single-node SLURM cluster (the session fixture `cluster` in conftest.py); the test
waits until the job leaves the queue and checks that every task COMPLETED. `torchrun` runs 2 CPU processes (gloo)."""
import os, re, select, shlex, signal, socket, subprocess, time
from dataclasses import dataclass, field
from pathlib import Path
import pytest
from conftest import ROOT, BIN, wait_for_job

TIMEOUT = 900                                                # seconds per command

# ----------------------------------------------------------------------------------------------------------------
# The README's commands and their `# tests:` notes

@dataclass
class Command:
    line: str                                                # as the README shows it (comment included)
    block: int                                               # which ```sh block
    note: str = ''                                           # the `# tests:` note under it, if any
    run: str|None = None                                     # what the test runs (None: not run)
    why: str = ''
    edits: list = field(default_factory=list)

    @property
    def slurm(self) -> bool: return '--slurm' in (self.run or '').split()

def sh_blocks(text:str) -> list[list[str]]:
    return [b.splitlines() for b in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)]

def _words(line:str) -> list[str]:
    "The words of a command line (its trailing comment dropped); the README's commands need no quoting."
    w = shlex.split(line, comments=True)
    bad = [x for x in w if re.search(r"[\s'\"\\]", x)]
    if bad: raise ValueError(f"README command {line!r}: words {bad} need quoting; the tests join words with spaces")
    return w

def _is_key(word:str) -> bool: return bool(re.match(r"[A-Za-z_]\w*=", word))

def _flag_span(words, i) -> int:
    "Index after flag `words[i]` and its values (the words up to the next flag or key=value)."
    j = i + 1
    while j < len(words) and not words[j].startswith('-') and not _is_key(words[j]): j += 1
    return j

def _edits(spec:str) -> list[tuple]:
    "`# tests:` edits -> [('key', k, word) | ('flag', flag, values) | ('param', name, value) | ('word', old, new)]."
    w, out, i = spec.split(), [], 0
    while i < len(w):
        if i + 2 < len(w) and w[i + 1] == '->': out.append(('word', w[i], w[i + 2])); i += 3
        elif w[i] == '-p': out.append(('param', w[i + 1], w[i + 2])); i += 3
        elif w[i].startswith('-'): j = _flag_span(w, i); out.append(('flag', w[i], w[i + 1:j])); i = j
        elif _is_key(w[i]): out.append(('key', w[i].split('=', 1)[0], w[i])); i += 1
        else: raise ValueError(f"README `# tests: {spec}`: cannot read {w[i]!r} (key=value, --flag values, -p name value or OLD -> NEW)")
    return out

def apply_edits(line:str, edits) -> str:
    "The command `line` with `edits` applied: each replaces its setting, or is appended where the command lacks it."
    w = _words(line)
    for kind, k, v in edits:
        if kind == 'word':
            assert k in w, f"README `# tests:` replaces {k!r}, which {line!r} does not hold"
            w = [v if x == k else x for x in w]
        elif kind == 'key':                                  # a new key goes after the command's last one (argparse wants them together)
            hits = [i for i, x in enumerate(w) if x.startswith(k + '=')]
            keys = [i for i, x in enumerate(w) if _is_key(x)]
            if hits: w[hits[0]] = v
            else: w.insert(keys[-1] + 1 if keys else len(w), v)
        elif kind == 'flag':
            if k in w: i = w.index(k); w[i:_flag_span(w, i)] = [k, *v]
            else: w += [k, *v]
        elif kind == 'param':
            hits = [i for i in range(len(w) - 2) if w[i] == '-p' and w[i + 1] == k]
            if hits: w[hits[0] + 2] = v
            else: w += ['-p', k, v]
    return ' '.join(w)

def readme_commands(text:str) -> list[Command]:
    "Every command of the README's ```sh blocks, in order, with what the test runs for it."
    cmds = []
    for b, lines in enumerate(sh_blocks(text)):
        for line in lines:
            if not line.strip(): continue
            m = re.match(r"#\s*tests:\s*(.*)$", line.strip())
            if m:
                assert cmds and cmds[-1].block == b and not cmds[-1].note, f"README: `{line.strip()}` must follow the command it is about (one note each)"
                cmds[-1].note = m[1]
            elif not line.lstrip().startswith('#'): cmds.append(Command(line.strip(), b))
    for c in cmds:
        spec, _, c.why = (s.strip() for s in c.note.partition(';'))
        if spec == 'not run': c.run = None
        elif spec.startswith('as '): c.run = spec[3:].strip()
        else: c.edits = _edits(spec); c.run = apply_edits(c.line, c.edits) if c.edits else c.line
        assert c.run is not None or c.why, f"README `{c.line}`: `# tests: not run` needs a reason after ';'"
    return cmds

README = (ROOT/'README.md').read_text()
COMMANDS = readme_commands(README)

def _id(c:Command) -> str:
    w = [x for x in _words(c.line) if not x.startswith('-') and '=' not in x][:3]
    return '-'.join(re.sub(r'[^A-Za-z0-9_.]+', '_', x).strip('_') for x in w)

# A README command that fails because of a library bug (not this test) is marked here: xfail(strict), with the diagnosis.
KNOWN_FAILURES: dict[str, str] = {}

def _param(i, c):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[c.line])] if c.line in KNOWN_FAILURES else []
    return pytest.param(i, id=f"{i:02d}-{_id(c)}", marks=marks)

# ----------------------------------------------------------------------------------------------------------------
# The parser and its convention, on a made-up README

def test_convention_edits_replace_or_add_settings():
    text = ("```sh\nmedsynth train data=a/ size=[64,64] epochs=20 --run r --gpus 4  # why\n# tests: size=[16,16] seed=1 --gpus 0; tiny\n"
            "medsynth sample r --n 64 --steps 25\n# tests: --n 4\n"
            "medsynth paper p -p mode dual --slurm --partition gpu --array g.yaml\n# tests: -p mode bravo -p size 16 --partition debug --cpus 1\n"
            "medsynth runs show runs/p/2026/task-1\n# tests: runs/p/2026/task-1 -> runs/p/*/task-1\n"
            "make demo\n# tests: as medsynth demo --minutes 0.1\nmake test\n# tests: not run; it runs these tests\n```\n")
    c = readme_commands(text)
    assert [x.run for x in c] == ['medsynth train data=a/ size=[16,16] epochs=20 seed=1 --run r --gpus 0', 'medsynth sample r --n 4 --steps 25',
                                  'medsynth paper p -p mode bravo --slurm --partition debug --array g.yaml -p size 16 --cpus 1',
                                  'medsynth runs show runs/p/*/task-1', 'medsynth demo --minutes 0.1', None]
    assert c[0].why == 'tiny' and c[2].slurm and not c[1].slurm and c[5].why == 'it runs these tests'
    with pytest.raises(AssertionError, match='must follow the command'): readme_commands("```sh\n# tests: --n 1\nmedsynth x\n```\n")
    with pytest.raises(AssertionError, match='does not hold'): readme_commands("```sh\nmedsynth x\n# tests: a -> b\n```\n")
    with pytest.raises(AssertionError, match='needs a reason'): readme_commands("```sh\nmake test\n# tests: not run\n```\n")

def test_readme_commands_are_all_covered():
    "Every ```sh line is a command or its note; the set-up commands are accounted for; nothing edits a command silently."
    assert len(COMMANDS) >= 20 and all(c.line in README for c in COMMANDS)
    by = {c.line.split('#')[0].strip(): c for c in COMMANDS}
    assert by['make test'].run is None and 'make test' in (ROOT/'.ci'/'run').read_text()
    demo = by['make demo'].run
    assert demo and demo.split()[:2] == ['medsynth', 'demo'], demo
    assert re.search(r"^demo:.*\n\t\$\(BIN\)/medsynth demo\s*$", (ROOT/'Makefile').read_text(), re.M), "the Makefile's demo target no longer runs `medsynth demo`"
    for c in COMMANDS:                                      # a command runs as written unless its note says otherwise
        assert c.run is None or c.note or c.run == c.line, c.line

# ----------------------------------------------------------------------------------------------------------------
# Running a command in a pseudo-terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")

def screen_lines(raw:str) -> list[str]:
    "What a terminal shows for `raw`: escape codes dropped, each carriage return overwriting its line."
    return [l.rsplit('\r', 1)[-1] if l.rstrip('\r') else '' for l in ANSI.sub('', raw).replace('\r\n', '\n').split('\n')]

def run_in_pty(cmd:str, cwd, env, timeout:float=TIMEOUT) -> tuple[int, str]:
    "Run `cmd` with bash in a new pseudo-terminal (120 x 40) in `cwd`; its exit status and everything it wrote."
    import fcntl, struct, termios
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
    p = subprocess.Popen(['bash', '-c', cmd], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True, close_fds=True)
    os.close(slave)
    out, end, exited = bytearray(), time.monotonic() + timeout, None
    try:
        while True:
            if time.monotonic() > end:
                os.killpg(p.pid, signal.SIGKILL); p.wait()
                return -9, out.decode(errors='replace') + f"\n[killed after {timeout} s]"
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try: chunk = os.read(master, 65536)
                except OSError: break                        # EIO: every writer has closed the terminal
                if not chunk: break
                out += chunk
            elif p.poll() is not None:                       # exited; a leftover child may hold the terminal open
                exited = exited or time.monotonic()
                if time.monotonic() - exited > 5: break
    finally:
        os.close(master)
    return p.wait(), out.decode(errors='replace')

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def user_env() -> dict:
    "The user's shell after `. .venv/bin/activate`; torchrun's rendezvous on a free port (PET_MASTER_PORT), not 29500."
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTEST_', 'COV_'))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(BIN.parent), TERM='xterm-256color',
               COLUMNS='120', LINES='40', PET_MASTER_PORT=str(_free_port()), PYTHONUNBUFFERED='1')
    return env

# ----------------------------------------------------------------------------------------------------------------
# What users bring, at the README's paths

def write_user_files(d:Path):
    "Phantom data and small weight files of the real formats at every path the README's commands read."
    import numpy as np, torch, yaml
    from PIL import Image
    from medsynth.data.phantoms import BrainPhantom, write_class_folders, write_subjects
    from medsynth.systems.pds_data import write_phantom_atlas
    from medsynth.models.domain import train_encoder, save_encoder
    from medsynth.spaces.vae import AEConfig, train_autoencoder, latent_scale_factor, save_autoencoder
    torch.set_num_threads(2)
    # isic/: RGB class folders (a dermoscopy stand-in: phantoms of three lesion kinds, tinted); the README samples isic/melanoma
    ph = BrainPhantom((32, 32), classes='kinds', k=3, prevalence=1., seed=0)
    tint = dict(akiec=(1., .7, .5), bcc=(.8, .6, .9), melanoma=(.5, .35, .3))                # sorted: melanoma is class 2
    imgs, labels, i = [], [], 0
    for j, (name, rgb) in enumerate(tint.items()):
        (d/'isic'/name).mkdir(parents=True)
        for k in range(8):
            x = np.clip(ph.render(i)['t1ce'], 0, 1)[..., None] * np.array(rgb); i += 1
            Image.fromarray((x * 255).round().astype(np.uint8)).save(d/'isic'/name/f'{k:03d}.png')
            imgs.append(x.transpose(2, 0, 1)); labels.append(j)
    x = torch.tensor(np.stack(imgs), dtype=torch.float32)
    ac = AEConfig(in_channels=3, channels=(8, 16), latent_channels=2, nonlocal_attn=False, steps=5, batch_size=8, seed=0)
    ae, _ = train_autoencoder(x * 2 - 1, ac)
    save_autoencoder(ae, ac, latent_scale_factor(ae, x * 2 - 1), d/'ae.pt')
    save_encoder(train_encoder(x, labels, steps=5, batch_size=16, widths=(8, 16, 16, 16), seed=0), d/'encoder.pt')
    # pairs/ and atlas.nii.gz: PDS's paired maps (t1, fa) on two grids
    pp = BrainPhantom((32, 32, 16), second_size=(48, 48, 24), prevalence=1., seed=0)
    write_subjects(d/'pairs', pp, 6, modalities=('t1', 'fa'))
    write_phantom_atlas(d/'atlas.nii.gz', pp)
    # held-out/, samples/, train/: three image sets for `medsynth eval`; Inception's weights file (random weights)
    for name, seed in (('held-out', 1), ('samples', 2), ('train', 3)):
        write_class_folders(d/name, BrainPhantom((32, 32), seed=seed), 24)
    from unittest import mock
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    with mock.patch.object(tfi, 'load_state_dict_from_url', lambda *a, **k: {}), \
         mock.patch.object(tfi.FeatureExtractorInceptionV3, 'load_state_dict', lambda self, sd, *a, **k: None):
        torch.save(tfi.FeatureExtractorInceptionV3('inception-v3-compat', ['2048']).state_dict(), d/'pt_inception-2015-12-05-6726825d.pth')
    # grid.yaml: what the README's comment says it holds
    grid = re.search(r"grid\.yaml: (\{.*\})", README)
    assert grid, "README: the sweep's comment no longer says what grid.yaml holds"
    (d/'grid.yaml').write_text(yaml.safe_dump(yaml.safe_load(grid[1])))

@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp('readme')
    write_user_files(d)
    return d

# ----------------------------------------------------------------------------------------------------------------
# The commands, in the README's order

def _tail(out:str, n:int=60) -> str:
    lines = [l for l in screen_lines(out) if l.strip()]
    return '\n'.join(lines[-n:])

def _slurm_logs(d:Path, job:str) -> str:
    logs = sorted(d.rglob(f'slurm-{job}*.log'))
    return '\n'.join(f"--- {p.relative_to(d)}\n{_tail(p.read_text(errors='replace'), 30)}" for p in logs) or 'no job log found'

TIMES: dict[str, float] = {}                             # seconds per README command, printed at the end (pytest -s)
SLURM_SKIPPED: list[str] = []

@pytest.fixture(scope='module', autouse=True)
def report_times():
    yield
    if TIMES: print('\nREADME commands (seconds):\n' + '\n'.join(f"{t:7.1f}  {line}" for line, t in TIMES.items()) + f"\n{sum(TIMES.values()):7.1f}  in all")

@pytest.mark.parametrize('i', [_param(i, c) for i, c in enumerate(COMMANDS)])
def test_readme_command(i, workdir, request):
    c = COMMANDS[i]
    if c.run is None: pytest.skip(f"`{c.line}` is not run here: {c.why}")
    if c.slurm:
        try: request.getfixturevalue('cluster')
        except pytest.skip.Exception: SLURM_SKIPPED.append(c.line); raise          # no cluster here (outside CI)
    globs = [w for w in c.run.split() if '*' in w]            # a folder an earlier command made, named by its start time
    if SLURM_SKIPPED and any(not list(workdir.glob(g)) for g in globs):
        pytest.skip(f"{' '.join(globs)} matches nothing: the SLURM command that makes it was skipped")
    t0 = time.time()
    try: rc, out = run_in_pty(c.run, workdir, user_env())
    finally: TIMES[c.line] = time.time() - t0
    shown = c.run if c.run == c.line else f"{c.run}\n  (README: {c.line})"
    assert rc == 0 and 'Traceback (most recent call last)' not in out, \
        f"README command failed (exit {rc}{', traceback' if 'Traceback (most recent' in out else ''}):\n  {shown}\n--- output, last lines:\n{_tail(out)}"
    if c.slurm:
        m = re.search(r"submitted job (\d+)", ANSI.sub('', out))
        assert m, f"`{c.run}` printed no job id:\n{_tail(out)}"
        states = wait_for_job(m[1], timeout=TIMEOUT)
        assert states and all(s == 'COMPLETED' for s in states.values()), f"`{c.run}`: job {m[1]} ended {states}\n{_slurm_logs(workdir, m[1])}"
        TIMES[c.line] = time.time() - t0

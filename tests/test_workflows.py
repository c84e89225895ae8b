"""The CI workflows a fork gets (.github/workflows): valid YAML, the README's test command on push and pull request, and
nbdev's docs deployment. GitHub cannot be reached from here, so this checks what the files say, not a run."""
import re
import yaml
from conftest import ROOT

WF = ROOT/'.github'/'workflows'

def load(name) -> dict:
    wf = yaml.safe_load((WF/name).read_text())
    wf['on'] = wf.pop(True, wf.get('on'))          # YAML 1.1 reads the key `on` as True
    assert wf['name'] and wf['jobs'], f"{name}: needs a name and jobs"
    return wf

def readme_test_command() -> str:
    "The README's test command: the `make test` line of its Quick start block, without its comment."
    blocks = re.findall(r"^```sh\n(.*?)^```", (ROOT/'README.md').read_text(), re.M | re.S)
    cmds = [l.split('#')[0].strip() for b in blocks for l in b.splitlines() if l.startswith('make test')]
    assert len(cmds) == 1, cmds
    return cmds[0]

def runs(job) -> list[str]: return [s['run'] for s in job['steps'] if 'run' in s]

def test_every_workflow_is_valid_yaml():
    names = sorted(p.name for p in WF.iterdir())
    assert names == ['deploy.yaml', 'test.yaml'], names
    for n in names: load(n)

def test_test_workflow_runs_the_readme_test_command():
    wf, cmd = load('test.yaml'), readme_test_command()
    assert cmd == 'make test' and {'push', 'pull_request'} <= set(wf['on']), wf['on']
    (job,) = wf['jobs'].values()
    assert job['runs-on'].startswith('ubuntu')
    py = next(s['with'] for s in job['steps'] if s.get('uses', '').startswith('actions/setup-python@'))
    assert py['python-version'] == '3.11' and py['cache'] == 'pip', py
    assert 'requirements.lock' in py['cache-dependency-path']     # the cache follows the lock make installs
    assert any(re.search(rf"(^|\s){cmd}$", r.strip()) for r in runs(job)), runs(job)
    assert re.search(r"^test:", (ROOT/'Makefile').read_text(), re.M)

def test_deploy_workflow_is_nbdevs_quarto_pages_action():
    wf = load('deploy.yaml')
    assert wf['on']['push']['branches'] and 'workflow_dispatch' in wf['on']
    assert wf['permissions']['contents'] == 'write', 'the action pushes _docs/ to the gh-pages branch'
    (job,) = wf['jobs'].values()
    (step,) = job['steps']
    assert re.fullmatch(r"fastai/workflows/quarto-ghp3?@\S+", step['uses']), step
    assert str(step['with']['version']) == '3.11'

"""Paper runs and SLURM jobs on a real single-node SLURM cluster started here (slurm/local/start.sh; stopped by PID afterwards).

What runs for real: sbatch of rendered templates, a job array sweep of a tiny paper notebook through papermill, a failed
job reported by `medsynth runs`, and a training job that gets the preemption signal, checkpoints, requeues itself and
resumes to the end."""
import json, os, re, subprocess, time
from pathlib import Path
import nbformat
from conftest import tool, cli                # the `cluster` fixture (one start per session) is in conftest.py
from medsynth.data.phantoms import BrainPhantom, write_subjects

medsynth = cli

def write_paper(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("out_dir = 'runs/tiny'\nn = 3\nscale = 0.5\nfail = False\nseed = 0"),
                nbformat.v4.new_code_cell("import json, pathlib\nassert not fail, 'asked to fail'\n"
                                          "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'total': n * scale + seed}))")]
    nb.cells[0].metadata['tags'] = ['parameters']
    nb.metadata['kernelspec'] = dict(name='python3', display_name='Python 3', language='python')
    path.parent.mkdir(parents=True, exist_ok=True); nbformat.write(nb, str(path))

def job_id(r):
    assert r.returncode == 0, r.stderr[-2000:]
    return re.search(r'submitted job (\d+)', r.stdout).group(1)

def in_queue(j): return bool(subprocess.run(['squeue', '-h', '-j', j], capture_output=True, text=True).stdout.strip())

def wait(j, timeout=400):
    end = time.time() + timeout
    while in_queue(j):
        assert time.time() < end, f"job {j} still queued after {timeout} s: {subprocess.run(['scontrol', 'show', 'job', j], capture_output=True, text=True).stdout[-1500:]}"
        time.sleep(1)

def job_field(j, key):
    out = subprocess.run(['scontrol', '-o', 'show', 'job', j], capture_output=True, text=True).stdout
    return re.search(rf'\b{key}=(\S+)', out).group(1)

def test_array_sweep_of_a_paper(cluster, tmp_path):
    "A 3-task array (two grid points, one of them over two seeds) runs on the cluster; `runs table` collects it."
    write_paper(tmp_path/'papers'/'tiny.ipynb')
    (tmp_path/'grid.yaml').write_text("- {n: 1, seed: 0}\n- {n: 1, seed: 1}\n- {n: 2, seed: 0}\n")
    r = medsynth('paper', 'tiny', '--slurm', '--array', tmp_path/'grid.yaml', '-p', 'scale', '2.0', '--papers', tmp_path/'papers',
                 '--runs', tmp_path/'runs', '--cpus', 1, '--mem', '500M', '--time', '00:10:00')
    j = job_id(r); wait(j)
    sweep = next((tmp_path/'runs'/'tiny').iterdir())
    for i, (n, seed) in enumerate([(1, 0), (1, 1), (2, 0)]):
        t = sweep/f'task-{i}'
        assert json.loads((t/'metrics.json').read_text()) == {'total': n * 2.0 + seed}
        assert json.loads((t/'status.json').read_text())['state'] == 'completed'
        cfg = json.loads((t/'config.json').read_text())
        assert cfg['given'] == {'n': n, 'seed': seed, 'scale': 2.0} and cfg['slurm']['SLURM_ARRAY_TASK_ID'] == str(i)
        assert (t/'tiny.ipynb').exists() and list(t.glob(f'slurm-{j}_{i}.log'))
    listing = medsynth('runs', '--runs', tmp_path/'runs')
    assert listing.returncode == 0 and listing.stdout.count('completed') == 3 and f'{j}_2' in listing.stdout, listing.stdout
    table = medsynth('runs', 'table', 'tiny', '--runs', tmp_path/'runs')
    assert table.returncode == 0, table.stderr
    import numpy as np, pandas as pd
    csv = pd.read_csv(sweep/'table.csv')
    assert list(csv.columns) == ['n', 'n_seeds', 'total_mean', 'total_sd'] and list(csv.n) == [1, 2] and list(csv.n_seeds) == [2, 1]
    assert np.allclose(csv.total_mean, [np.mean([2.0, 3.0]), 4.0]) and np.isclose(csv.total_sd[0], np.std([2.0, 3.0], ddof=1)) and np.isnan(csv.total_sd[1])
    rows = [line for line in (sweep/'table.md').read_text().splitlines() if line.startswith('| 1 ') or line.startswith('| 2 ')]
    assert rows == [f"| 1 | 2 | {np.mean([2.0, 3.0]):.4g} +- {np.std([2.0, 3.0], ddof=1):.2g} |", "| 2 | 1 | 4 |"], rows
    assert (sweep/'table.png').stat().st_size > 2_000 and f"wrote {sweep/'table.csv'}" in table.stdout

def test_failed_job_is_reported_with_its_log(cluster, tmp_path):
    write_paper(tmp_path/'papers'/'tiny.ipynb')
    j = job_id(medsynth('paper', 'tiny', '--slurm', '-p', 'fail', 'true', '--papers', tmp_path/'papers', '--runs', tmp_path/'runs', '--cpus', 1, '--mem', '500M'))
    wait(j)
    assert job_field(j, 'JobState') == 'FAILED'
    run = next((tmp_path/'runs'/'tiny').iterdir())
    assert 'failed' in medsynth('runs', '--runs', tmp_path/'runs').stdout
    show = medsynth('runs', 'show', run).stdout
    assert 'state: failed' in show and 'SLURM FAILED' in show and 'AssertionError: asked to fail' in show and 'last lines' in show, show

def test_training_job_is_preempted_requeued_and_resumes(cluster, tmp_path):
    write_subjects(tmp_path/'data', BrainPhantom((32, 32, 16), prevalence=1., seed=0), 6, modalities=('t1', 't1ce', 'seg'))
    run = tmp_path/'train'
    j = job_id(medsynth('train', f'data={tmp_path/"data"}', 'mode=seg', 'size=[16,16]', 'channels=[8,8,8]', 'attention_levels=[false,false,false]',
                        'num_head_channels=8', 'batch_size=4', 'epochs=8', 'valid_frac=0.2', 'ema_after=1', '--run', run, '--slurm', '--cpus', 2, '--mem', '2G'))
    ck, end = run/'checkpoints'/'last.pt', time.time() + 300
    while not ck.exists():                                     # the first epoch has checkpointed
        assert time.time() < end and in_queue(j), (run/f'slurm-{j}.log').read_text()[-2000:] if (run/f'slurm-{j}.log').exists() else 'no log'
        time.sleep(0.5)
    # what SLURM's --signal=B:USR1@300 does before the time limit, now
    subprocess.run(['scancel', '--signal=USR1', '--batch', j], check=True)
    end = time.time() + 300
    while job_field(j, 'Restarts') == '0' or job_field(j, 'JobState') not in ('PENDING', 'RUNNING', 'COMPLETED'):
        assert time.time() < end, (run/f'slurm-{j}.log').read_text()[-2000:]
        time.sleep(0.5)
    if job_field(j, 'JobState') == 'PENDING':
        # SLURM holds a requeued job about two minutes; skip that wait, though not within the same seconds as the requeue,
        # when slurmd still refuses the job's revoked credential ("Killing non-startable batch job")
        time.sleep(5); subprocess.run(['scontrol', 'update', f'JobId={j}', 'StartTime=now'], check=True)
    wait(j)
    log = (run/f'slurm-{j}.log').read_text()
    assert job_field(j, 'JobState') == 'COMPLETED', log[-2000:]
    assert 'preemption signal' in log and 'requeueing' in log and 'restart 1' in log and 'on request (stop file' in log, log[-3000:]
    import torch
    state = torch.load(ck, weights_only=True, map_location='cpu')
    assert state['epoch'] == 8, state['epoch']
    import pandas as pd
    h = pd.read_csv(run/'logs'/'history.csv')
    assert list(h.epoch) == list(range(8)), h                  # every epoch once: the resumed run went on from the checkpoint

def test_multi_gpu_train_script_reaches_medsynth(tmp_path):
    "The sbatch script `--gpus N` renders (N > 1: torchrun, one process each) runs, here as two CPU processes over gloo."
    from medsynth.app.experiments import submit_train
    write_subjects(tmp_path/'data', BrainPhantom((32, 32, 16), prevalence=1., seed=0), 6, modalities=('t1', 't1ce', 'seg'))
    run = tmp_path/'ddp'
    submit_train([f'data={tmp_path/"data"}', 'mode=seg', 'size=[16,16]', 'channels=[8,8,8]', 'attention_levels=[false,false,false]',
                  'num_head_channels=8', 'batch_size=2', 'epochs=1', 'valid_frac=0.2'], run, gpus=2, submit=False)
    env = dict(os.environ, SLURM_JOB_ID='1', PET_MASTER_PORT='29533', OMP_NUM_THREADS='1')
    r = subprocess.run(['bash', str(run/'job.sbatch')], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]      # torchrun once read medsynth's --run as its own --run-path
    import torch
    assert torch.load(run/'checkpoints'/'last.pt', weights_only=True, map_location='cpu')['epoch'] == 1

def test_sbatch_missing_points_to_running_locally(tmp_path):
    write_paper(tmp_path/'papers'/'tiny.ipynb')
    env = dict(os.environ, PATH=str(Path(tool('medsynth')).parent))
    r = medsynth('paper', 'tiny', '--slurm', '--papers', tmp_path/'papers', '--runs', tmp_path/'runs', env=env)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'sbatch not found' in r.stderr and 'run locally without --slurm' in r.stderr, r.stderr
    assert not (tmp_path/'runs').exists()

def test_paper_bad_input(tmp_path):
    write_paper(tmp_path/'papers'/'tiny.ipynb')
    P = ('--papers', tmp_path/'papers', '--runs', tmp_path/'runs')
    for args, words in [(('nope',), ["unknown paper 'nope'", 'tiny']), (('tiny', '-p', 'nn', '2'), ["has no parameter 'nn'", "did you mean 'n'"]),
                        (('tiny', '-p', 'n', 'two'), ["n='two' is a str"])]:
        r = medsynth('paper', *args, *P)
        assert r.returncode == 2 and r.stderr.count('\n') == 1 and all(w in r.stderr for w in words), r.stderr
    (tmp_path/'empty.yaml').write_text('n: []\n')
    r = medsynth('paper', 'tiny', '--slurm', '--array', tmp_path/'empty.yaml', *P)
    assert r.returncode == 2 and "parameter 'n' has no values" in r.stderr, r.stderr
    assert not (tmp_path/'runs').exists()

def test_mri_synth_paper_runs_with_tiny_parameters(tmp_path):
    r = medsynth('paper', 'mri_synth', '--runs', tmp_path/'runs', '--no-progress', '-p', 'subjects', 8, '-p', 'batch_size', 4, '-p', 'size', 16,
                 '-p', 'epochs_seg', 1, '-p', 'epochs_image', 1, '-p', 'channels', '[8,8,8]', '-p', 'attention', '[false,false,false]',
                 '-p', 'n_synthetic', 12, '-p', 'steps', 4, '-p', 'encoder_steps', 5, '-p', 'utility_steps', 5, '-p', 'mode', 'dual', '-p', 'strategy', 'rflow',
                 '-p', 'backbones', '[unet,dit]', '-p', 'backbone_epochs', 1)
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path/'runs'/'mri_synth').iterdir())
    m = json.loads((run/'metrics.json').read_text())
    assert m['mode'] == 'dual' and m['strategy'] == 'rflow' and {'fid', 'dice_real', 'dice_real_plus_synthetic'} <= set(m)
    man = (run/'synthetic'/'manifest.csv').read_text()
    assert man.count('\n') == 1 + 12 * 3 and '_t1.png' in man and '_mask.png' in man     # dual: t1, t1ce and the mask per sample
    assert (run/'eval'/'report.md').exists() and (run/'mri_synth.ipynb').exists()
    assert json.loads((run/'config.json').read_text())['parameters']['mode'] == 'dual'
    assert [b['backbone'] for b in m['backbones']] == ['real (ceiling)', 'unet', 'dit'] and (run/'backbones.md').exists()
    said = (run/'verdict.md').read_text().splitlines()[2:]                  # the ladder, real only, synthetic, both
    assert len(said) == 4 and r.stdout.strip().splitlines()[-4:] == [f"verdict: {t[2:]}" for t in said]

MGDM_TINY = ('-p', 'size', 16, '-p', 'channels', '[8,8,8]', '-p', 'attention', '[false,false,false]', '-p', 'epochs', 1,
             '-p', 'classifier_epochs', 1, '-p', 'batch_size', 8, '-p', 'n_added', 8, '-p', 'steps', 5, '-p', 'utility_steps', 5,
             '-p', 'encoder_steps', 5)
MGDM_ROWS = {'real', 'real + stage 1', 'real + stage 2, no guidance', 'real + stage 2, uncertainty', 'real + oversampling',
             'real + augmentation'}

def test_mgdm_paper_runs_with_tiny_parameters(tmp_path):
    r = medsynth('paper', 'mgdm', '--runs', tmp_path/'runs', '--no-progress', '-p', 'n_train', 32, *MGDM_TINY, '-p', 'stage1', 'classifier')
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path/'runs'/'mgdm').iterdir())
    m = json.loads((run/'metrics.json').read_text())
    assert set(m['utility']) == MGDM_ROWS and set(m['utility']['real']) == {'accuracy', 'balanced_accuracy', 'auroc'}
    assert all(len(v) == 3 for r_ in m['utility_values'].values() for v in r_.values())                  # 3 seeds per row
    assert set(m['n']) == {'real', 'test'} | {k.replace(' + ', '+') for k in MGDM_ROWS - {'real'}}
    assert len({v for k, v in m['n'].items() if k not in ('real', 'test')}) == 1                          # every added set: the same size
    assert sum(m['added_per_class'].values()) == 8 and m['added_per_class']['lesion'] == 8 and m['preset'] == 'phantom'
    assert m['stage1'] == 'classifier' and set(m['classifier_entropy']) == {'real', 'stage1', 'stage2_no_guidance', 'stage2'}
    assert (run/'ablation.md').read_text().count('\n') == 8
    v = m['verdicts']                                                    # printed under the table, stored in metrics.json
    assert v['baseline']['verdict'] in ('learned', 'uninformative') and v['baseline']['text'] in r.stdout
    assert set(v['sets']) == {k.replace(' + ', '+') for k in MGDM_ROWS - {'real'}}
    assert set(m['fidelity']) == {'stage 1', 'stage 2, uncertainty'} and (run/'eval-stage2-uncertainty'/'report.md').exists()
    assert r.stdout.strip().splitlines()[-8:] == [f"verdict: {t[2:]}" for t in (run/'verdict.md').read_text().splitlines()[2:]]
    bad = medsynth('paper', 'mgdm', '--runs', tmp_path/'runs', '--no-progress', '-p', 'data', tmp_path/'x')
    assert bad.returncode == 2 and 'give test_data too' in bad.stderr, bad.stderr[-500:]

def rgb_class_folders(root, n, prevalence, seed):
    "Phantom class folders made RGB: the gray image scaled differently per channel."
    from PIL import Image
    import numpy as np
    from medsynth.data.phantoms import write_class_folders
    gray = write_class_folders(root.with_name(root.name + '-gray'), BrainPhantom((16, 16), prevalence=prevalence, seed=seed), n)
    for f in gray.rglob('*.png'):
        a = np.asarray(Image.open(f).convert('L'), dtype=np.float32)
        out = root/f.relative_to(gray)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([a, a * 0.8, a * 0.6], -1).astype(np.uint8)).save(out)
    return root

def test_mgdm_paper_preset_on_rgb_class_folders(tmp_path):
    "The paper preset on 3-channel class folders, every size parameter overridden to tiny; without data it refuses."
    bad = medsynth('paper', 'mgdm', '--runs', tmp_path/'runs', '--no-progress', '-p', 'preset', 'paper')
    assert bad.returncode == 2 and "preset 'paper' needs data and test_data" in bad.stderr, bad.stderr[-500:]
    train, test = rgb_class_folders(tmp_path/'train', 32, 0.25, 0), rgb_class_folders(tmp_path/'test', 24, 0.5, 1)
    r = medsynth('paper', 'mgdm', '--runs', tmp_path/'runs', '--no-progress', '-p', 'preset', 'paper', '-p', 'data', train,
                 '-p', 'test_data', test, *MGDM_TINY, '-p', 'res_blocks', 1, '-p', 'classifier_channels', '[8,8,8]')
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(next((tmp_path/'runs'/'mgdm').glob('*/metrics.json')).read_text())
    assert m['preset'] == 'paper' and m['channels_in'] == 3 and set(m['utility']) == MGDM_ROWS
    assert m['stage1'] == 'classifier' and m['classifier_scale'] == 0.5 and m['parameters']['lr'] == 1e-4       # the preset's, not overridden

"""The GPU path, measured: training images/s and peak memory of medsynth's Learner in fp32 eager, bf16, bf16 +
channels-last, bf16 + torch.compile (+ channels-last) for the 2D UNet at 128x128 and the 3D UNet at 64^3; sampling
images/s; and DDP over all visible GPUs with NCCL when there are several. Ratios are against fp32 eager measured in
the same run.

Training is `build_learner` (the model factory, DiffusionCB noising, Min-SNR loss, clipping, EMA, PrecisionCB's autocast,
`compile` through the config) fitted on random bravo batches (mask -> image) already on the device, so the loader
does not bound the rate; a callback times `--steps` optimiser steps after `--warmup` steps (compilation happens there)
and stops the fit. Peak memory is `torch.cuda.max_memory_allocated` (none on the CPU, where one process cannot reset
its peak). Channels-last is measured for 2D (`torch.channels_last`); for 3D `torch.channels_last_3d` rarely helps
cuDNN's 3D convolutions and is left out. DDP runs the bf16 2D case in one process per GPU (torchrun, NCCL); on the CPU
`--ddp N` runs it with N gloo processes so the path is exercised. Writes gpu.md and gpu.json. About 5 minutes on one
H100 at the defaults (budget: 8).

    python benchmarks/gpu.py [--out runs/benchmarks] [--steps 20] [--warmup 3] [--tiny] [--ddp N]
"""
from __future__ import annotations
import argparse, gc, json, os, subprocess, sys, tempfile, time
from pathlib import Path
import torch
from fastai.callback.core import Callback, CancelFitException
from medsynth.training.config import make_config
from medsynth.training.data import build_dataloaders, mode_of, process_group, _dist
from medsynth.training.learner import build_learner
from medsynth.training.generation import generate
from medsynth.training.checkpoint import CheckpointCB
from medsynth.training.callbacks import RunLog

# (name, config keys, channels-last); 'compile' rows are skipped on the CPU unless --compile-on-cpu
VARIANTS = [('fp32 eager', dict(precision='fp32'), False), ('bf16', dict(precision='bf16'), False),
            ('bf16 + channels-last', dict(precision='bf16'), True),
            ('bf16 + compile', dict(precision='bf16', compile=True), False),
            ('bf16 + compile + channels-last', dict(precision='bf16', compile=True), True)]
CASES = dict(full={'2d': dict(size=[128, 128], channels=[64, 128, 256, 256], attention_levels=[False, False, True, True],
                              batch_size=16),
                   '3d': dict(size=[64, 64, 64], channels=[32, 64, 128, 128], attention_levels=[False, False, False, True],
                              batch_size=2)},
             tiny={'2d': dict(size=[16, 16], channels=[8, 16], attention_levels=[False, True], batch_size=4),
                   '3d': dict(size=[8, 8, 8], channels=[8, 16], attention_levels=[False, True], batch_size=2)})
COMPILE_SKIPPED = "skipped on the CPU: inductor compiles the UNet's C++ kernels for minutes here (--compile-on-cpu runs it)"

class Timer(Callback):
    "Seconds per optimiser step over `steps` steps after `warmup`; stops the fit when done (validation never runs)."
    order = 100
    def __init__(self, warmup:int, steps:int): self.warmup, self.steps, self.n, self.dt = warmup, steps, 0, None
    def after_batch(self):
        if not self.training: return
        self.n += 1
        if self.n == self.warmup: _sync(); self.t0 = time.perf_counter()
        if self.n == self.warmup + self.steps: _sync(); self.dt = (time.perf_counter() - self.t0) / self.steps; raise CancelFitException()

def _sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()

def _device():
    return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if torch.cuda.is_available() else torch.device('cpu')

def _config(case:dict, keys:dict, epochs:int=1):
    ch = case['channels']
    return make_config(dict(data='random', mode='bravo', dims=len(case['size']), num_head_channels=min(32, ch[-1]),
                            ema_after=0, epochs=epochs, lr_schedule='constant', **case, **keys))

def _batches(cfg, n:int):
    "`n` random bravo samples (an image in [-1, 1] and a mask), one dict each, as the datasets yield them."
    g = torch.Generator().manual_seed(0)
    return [{'t1ce': torch.rand(1, *cfg.size, generator=g) * 2 - 1, 'mask': (torch.rand(1, *cfg.size, generator=g) > .7).float()}
            for _ in range(n)]

def train_rate(case:dict, keys:dict, channels_last:bool, warmup:int, steps:int, run) -> dict:
    "Images/s (over all processes) and peak GPU memory of the Learner training `case` with config `keys`."
    dev, world = _device(), _dist()[0]
    cfg = _config(case, keys)
    ds = _batches(cfg, cfg.batch_size * world * (warmup + steps + 1))
    dls = build_dataloaders(ds, ds[:cfg.batch_size], cfg, device=dev)
    learn = build_learner(cfg, run, dls, progress=False)
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, (CheckpointCB, RunLog))])
    learn.net.to(dev); learn.ema.to(dev)
    if channels_last: learn.net.to(memory_format=torch.channels_last)
    timer = Timer(warmup, steps); learn.add_cb(timer)
    if dev.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(dev)
    learn.fit(1, cfg.lr)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == 'cuda' else None
    return dict(images_per_s=cfg.batch_size * world / timer.dt, s_per_step=timer.dt, peak_bytes=peak, learn=learn, cfg=cfg)

def sample_rate(learn, cfg, precision:str, n:int, steps:int) -> float:
    "Images/s of `generate` (DDIM, `steps` steps) from the trained network, fp32 or under bf16 autocast."
    net, dev = learn.net.eval(), _device()
    cond = (torch.rand(n, 1, *cfg.size, generator=torch.Generator().manual_seed(1)) > .7).float().to(dev) * 2 - 1
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == 'bf16' else torch.autocast(dev.type, enabled=False)
    with ctx:
        generate(net, cfg, (n, 1, *cfg.size), cond, sampler='ddim', steps=2)      # warm-up
        _sync(); t0 = time.perf_counter()
        generate(net, cfg, (n, 1, *cfg.size), cond, sampler='ddim', steps=steps, generator=torch.Generator().manual_seed(0))
        _sync()
    return n / (time.perf_counter() - t0)

def _row(dim, name, r, ref):
    return dict(case=dim, variant=name, images_per_s=r['images_per_s'], s_per_step=r['s_per_step'], peak_bytes=r['peak_bytes'],
                speedup=r['images_per_s'] / ref['images_per_s'] if ref else 1.,
                memory_ratio=r['peak_bytes'] / ref['peak_bytes'] if ref and r['peak_bytes'] and ref['peak_bytes'] else None)

def run_cases(a, tmp) -> tuple[list, list]:
    "Every (case, variant) training row and the sampling rows, ratios against fp32 eager of the same case."
    rows, samples, cpu = [], [], not torch.cuda.is_available()
    for dim, case in CASES['tiny' if a.tiny else 'full'].items():
        ref = None
        for name, keys, cl in VARIANTS:
            if cl and dim == '3d': continue
            if keys.get('compile') and cpu and not a.compile_on_cpu:
                rows.append(dict(case=dim, variant=name, skipped=COMPILE_SKIPPED)); continue
            torch._dynamo.reset()
            r = train_rate(case, keys, cl, a.warmup, a.steps, Path(tmp)/f'{dim}-{len(rows)}')
            if name in ('fp32 eager', 'bf16'):
                samples.append(dict(case=dim, precision=keys['precision'], sample_steps=a.sample_steps,
                                    images_per_s=sample_rate(r['learn'], r['cfg'], keys['precision'], a.n_sample, a.sample_steps)))
            r = {k: r[k] for k in ('images_per_s', 's_per_step', 'peak_bytes')}      # the network goes: its memory too
            gc.collect(); torch.cuda.empty_cache() if torch.cuda.is_available() else None
            ref = ref or r
            rows.append(_row(dim, name, r, ref))
    return rows, samples

def ddp_rows(a, n:int, out:Path) -> list:
    "The bf16 2D case in `n` processes (torchrun: NCCL on GPUs, gloo on the CPU); images/s over all of them."
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', __file__, '--ddp-child',
           '--out', str(out), '--steps', str(a.steps), '--warmup', str(a.warmup)] + (['--tiny'] if a.tiny else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1')))
    if r.returncode != 0:
        return [dict(case='2d', variant=f'DDP x{n} (bf16)', skipped=f"failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:200]}")]
    return [json.loads((out/'ddp.json').read_text())]

def ddp_child(a):
    "One torchrun process: the bf16 2D case under DDP; rank 0 writes ddp.json."
    with process_group(), tempfile.TemporaryDirectory() as tmp:
        world, rank = _dist()
        r = train_rate(CASES['tiny' if a.tiny else 'full']['2d'], dict(precision='bf16'), False, a.warmup, a.steps, Path(tmp)/f'ddp{rank}')
        if rank == 0:
            row = _row('2d', f'DDP x{world} (bf16)', r, None); row['speedup'] = None; row['processes'] = world
            row['backend'] = torch.distributed.get_backend()
            Path(a.out, 'ddp.json').write_text(json.dumps(row))

def _fmt(rows, samples, a, dev) -> str:
    mib = lambda b: f'{b / 2 ** 20:,.0f}' if b else '-'
    t = ['| case | variant | images/s | vs fp32 eager | peak memory (MiB) | vs fp32 eager |', '|---|---|---:|---:|---:|---:|']
    for r in rows:
        if 'skipped' in r: t.append(f"| {r['case']} | {r['variant']} | - | - | - | {r['skipped']} |"); continue
        sp = f"{r['speedup']:.2f}x" if r.get('speedup') else '-'
        t.append(f"| {r['case']} | {r['variant']} | {r['images_per_s']:,.1f} | {sp} | {mib(r['peak_bytes'])} | "
                 f"{'%.2fx' % r['memory_ratio'] if r.get('memory_ratio') else '-'} |")
    s = ['| case | precision | images/s |', '|---|---|---:|'] + [f"| {x['case']} | {x['precision']} | {x['images_per_s']:,.2f} |" for x in samples]
    sizes = {k: f"{'x'.join(map(str, c['size']))}, batch {c['batch_size']}, channels {c['channels']}" for k, c in CASES['tiny' if a.tiny else 'full'].items()}
    return '\n'.join([f"# The GPU path: medsynth's Learner on {dev} ({'tiny sizes' if a.tiny else 'full sizes'})", '',
                      f"2D: {sizes['2d']}; 3D: {sizes['3d']}; {a.steps} timed steps after {a.warmup} warm-up steps.", '',
                      *t, '', f"Sampling (DDIM, {a.sample_steps} steps, {a.n_sample} images, the fp32 / bf16 runs' networks):", '', *s, '',
                      'Ratios are against fp32 eager of the same case in this run.'])

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/benchmarks'); p.add_argument('--steps', type=int, default=20); p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--n-sample', type=int, default=16); p.add_argument('--sample-steps', type=int, default=20)
    p.add_argument('--tiny', action='store_true', help="tiny sizes (tests; runs on the CPU)")
    p.add_argument('--ddp', type=int, default=None, help="DDP processes (default: the number of GPUs when more than one)")
    p.add_argument('--compile-on-cpu', action='store_true', help="run the torch.compile rows on the CPU too")
    p.add_argument('--ddp-child', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.tiny: a.steps, a.warmup, a.n_sample, a.sample_steps = min(a.steps, 2), min(a.warmup, 1), 2, 2
    if min(a.steps, a.warmup, a.n_sample, a.sample_steps) < 1 or (a.ddp is not None and a.ddp < 1): p.error('all numbers must be >= 1')
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if a.ddp_child: return ddp_child(a)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f'CPU ({torch.get_num_threads()} threads)'
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows, samples = run_cases(a, tmp)
    n = a.ddp if a.ddp is not None else (torch.cuda.device_count() if torch.cuda.device_count() > 1 else 0)
    if n:
        rows += ddp_rows(a, n, out)
        ref = next((r for r in rows if r['case'] == '2d' and r['variant'] == 'fp32 eager'), None)
        if ref and 'images_per_s' in rows[-1]: rows[-1]['speedup'] = rows[-1]['images_per_s'] / ref['images_per_s']
    md = _fmt(rows, samples, a, dev) + f"\n\nWall time: {time.perf_counter() - t0:.0f} s."
    res = dict(device=dev, tiny=a.tiny, steps=a.steps, warmup=a.warmup, cases=CASES['tiny' if a.tiny else 'full'], rows=rows,
               sampling=samples, torch=torch.__version__)
    (out/'gpu.md').write_text(md + '\n'); (out/'gpu.json').write_text(json.dumps(res, indent=1))
    print(md); print(f"table: {out/'gpu.md'}\ndata: {out/'gpu.json'}")

if __name__ == '__main__': main()

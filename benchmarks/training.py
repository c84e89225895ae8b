"""Training overhead of medsynth's fastai Learner against a bare PyTorch loop, and sampling throughput per sampler.

Both loops train the same MONAI UNet (bravo mode: mask -> image) on the same cached phantom slices with the same
batch, AdamW, timestep sampling, noising, Min-SNR loss, gradient clipping and EMA; the bare loop is what one
would write by hand. Overhead = Learner time / bare time - 1, measured in one run (goal: <= 5% on CPU).
Sampling: images/s of `generate` with each sampler at a fixed number of steps. Writes training.md / training.json.

    python benchmarks/training.py [--out runs/benchmarks] [--steps 60] [--size 32] [--batch 16]
"""
from __future__ import annotations
import argparse, json, tempfile, time
from pathlib import Path
import torch, torch.nn as nn
from ema_pytorch import EMA
from medsynth.data.phantoms import BrainPhantom, write_subjects
from medsynth.training.config import make_config
from medsynth.training.data import build_datasets, build_dataloaders, mode_of
from medsynth.training.learner import build_learner
from medsynth.training.network import build_model
from medsynth.training.generation import schedule_of, generate
from medsynth.training.checkpoint import CheckpointCB
from medsynth.training.callbacks import RunLog
from medsynth.diffusion.objectives import get_timestep_sampler, diffusion_loss

def bare_loop(cfg, dls, steps):
    "The hand-written loop: same model, data, noising, loss, clipping, AdamW and EMA as the Learner."
    mode, sch = mode_of(cfg), schedule_of(cfg)
    net = build_model(cfg, mode); opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=cfg.wd)
    ema = EMA(net, beta=cfg.ema_beta, update_after_step=cfg.ema_after, update_every=cfg.ema_every, include_online_model=False)
    ts, g = get_timestep_sampler(cfg.timestep_sampler, sch), torch.Generator().manual_seed(cfg.seed)
    n, t0 = 0, None
    while n < steps + 1:
        for (b,) in dls.train:
            if n == 1: t0 = time.perf_counter()                 # the first step is warm-up, as for the Learner
            x0, cond, _ = mode.split(b); t, w = ts.sample(len(x0), generator=g); eps = torch.randn(x0.shape, generator=g)
            loss, per = diffusion_loss(net(sch.add_noise(x0, eps, t), sch.model_t(t), cond=cond), x0, eps, t, sch, cfg.prediction, cfg.weighting, cfg.gamma, w)
            opt.zero_grad(); loss.backward(); nn.utils.clip_grad_norm_(net.parameters(), cfg.clip); opt.step(); ema.update(); ts.update(t, per)
            n += 1
            if n == steps + 1: break
    return (time.perf_counter() - t0) / steps

def learner_loop(cfg, dls, classes, run, steps):
    from fastai.callback.core import Callback, CancelFitException
    class Timer(Callback):
        "Wall time of `steps` training steps; the validation passes at epoch ends (which the bare loop has not) are left out."
        order = 100
        def before_fit(self): self.n, self.skip = 0, 0.
        def before_validate(self): self.tv = time.perf_counter()
        def after_validate(self): self.skip += time.perf_counter() - self.tv
        def after_batch(self):
            if not self.training: return
            self.n += 1
            if self.n == 1: self.t0, self.skip = time.perf_counter(), 0.
            if self.n == steps + 1: self.dt = (time.perf_counter() - self.t0 - self.skip) / steps; raise CancelFitException()
    learn = build_learner(cfg, run, dls, classes, progress=False)
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, (CheckpointCB, RunLog))])
    timer = Timer(); learn.add_cb(timer)
    learn.fit(10_000, cfg.lr)
    return timer.dt

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/benchmarks'); p.add_argument('--steps', type=int, default=60)
    p.add_argument('--size', type=int, default=32); p.add_argument('--batch', type=int, default=16)
    p.add_argument('--repeats', type=int, default=3); p.add_argument('--n-sample', type=int, default=16); p.add_argument('--sample-steps', type=int, default=20)
    a = p.parse_args(argv)
    if min(a.steps, a.size, a.batch, a.repeats, a.n_sample, a.sample_steps) < 1: p.error('all numbers must be >= 1')
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_subjects(tmp/'data', BrainPhantom((64, 64, 24), prevalence=0.8, seed=0), 8, modalities=('t1', 't1ce', 'seg'))
        cfg = make_config(dict(data=str(tmp/'data'), mode='bravo', size=[a.size, a.size], batch_size=a.batch, ema_after=0, epochs=10_000))
        tr, va, cl = build_datasets(cfg); dls = build_dataloaders(tr, va, cfg)
        bare, learner = [], []
        for _ in range(a.repeats):                              # interleaved, so drift in machine speed hits both alike
            bare.append(bare_loop(cfg, dls, a.steps)); learner.append(learner_loop(cfg, dls, cl, tmp/'run', a.steps))
        net = build_model(cfg, mode_of(cfg)).eval(); x0, cond, _ = mode_of(cfg).split(next(iter(dls.valid))[0])
        cond = cond[:1].expand(a.n_sample, *cond.shape[1:]).contiguous()
        rates = {}
        for s in ('ddim', 'euler', 'heun', 'dpmpp_2m', 'dpmpp_3m', 'ddpm'):
            t0 = time.perf_counter(); generate(net, cfg, (a.n_sample, 1, a.size, a.size), cond, sampler=s, steps=a.sample_steps, generator=torch.Generator().manual_seed(0))
            rates[s] = a.n_sample / (time.perf_counter() - t0)
    b, l = min(bare), min(learner)
    res = dict(size=a.size, batch=a.batch, steps=a.steps, repeats=a.repeats, bare_s_per_step=bare, learner_s_per_step=learner,
               overhead=l / b - 1, goal=0.05, goal_met=l / b - 1 <= 0.05, sampling_images_per_s=rates, sample_steps=a.sample_steps)
    md = '\n'.join([f"# Training overhead and sampling throughput ({a.size}x{a.size}, batch {a.batch}, bravo, CPU threads {torch.get_num_threads()})", '',
                    '| loop | s/step (best of %d) |' % a.repeats, '|---|---:|', f'| bare PyTorch | {b:.4f} |', f'| medsynth Learner | {l:.4f} |', '',
                    f"Learner overhead: {100 * (l / b - 1):+.1f}% (goal <= 5%: {'met' if res['goal_met'] else 'NOT met'}).", '',
                    f'| sampler ({a.sample_steps} steps, untrained net) | images/s |', '|---|---:|', *[f'| {k} | {v:.2f} |' for k, v in rates.items()]])
    (out/'training.md').write_text(md + '\n'); (out/'training.json').write_text(json.dumps(res, indent=1))
    print(md); print(f"table: {out/'training.md'}\ndata: {out/'training.json'}")

if __name__ == '__main__': main()

"""3D at clinical size: peak memory and step time of one training step against volume size, in one run.

Three ways to train the same 3D diffusion UNet (bravo mode: mask -> image, batch 1, AdamW, Min-SNR v-loss), each built
by medsynth's model factory from a `TrainConfig`: `pixel` (the UNet on the volume), `pixel+ckpt` (the same with
`checkpointing=true`: UNet blocks recompute their activations in the backward pass) and `latent` (a 3D MONAI
`AutoencoderKL`, 4x downsampling, encodes the volume without gradients, as MAISI's latent diffusion does, and the UNet
trains on the latent grid). Every (way, size) runs in a fresh process so that its peak is its own: on a GPU
`torch.cuda.max_memory_allocated` above what the process held before the step, on the CPU the peak resident set size
(`ru_maxrss`) above the RSS before the step. Ratios are against `pixel` at the same size, measured in the same run.
Step time is the mean over `--steps` steps after one warm-up step. Writes volume.md and volume.json.

    python benchmarks/volume.py [--out runs/benchmarks] [--sizes 32 64 96 128] [--steps 2] [--tiny]
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path
import torch
import torch.nn.functional as F
from medsynth.training.config import make_config
from medsynth.training.data import mode_of, space_of
from medsynth.training.network import build_model
from medsynth.training.generation import schedule_of
from medsynth.diffusion.objectives import get_timestep_sampler, diffusion_loss
from medsynth.spaces.vae import AEConfig, model_of, save_autoencoder

WAYS = ('pixel', 'pixel+ckpt', 'latent')
AE_CHANNELS = (32, 64, 64)                              # 4x downsampling per axis, MAISI-like (no attention)

def _rss() -> int:
    "This process's resident set size now, bytes."
    return int(Path('/proc/self/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE')

def _config(way:str, size:int, channels, ae_path):
    att = [False] * len(channels)
    return make_config(dict(dims=3, size=[size] * 3, mode='bravo', channels=list(channels), attention_levels=att,
                            num_head_channels=channels[-1], batch_size=1, checkpointing=way == 'pixel+ckpt',
                            autoencoder=str(ae_path) if way == 'latent' else None))

def _batch(cfg, size:int, dev):
    "One volume and its mask, moved into the space the UNet trains in (latents are encoded without gradients)."
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 1, *[size] * 3, generator=g) * 2 - 1
    cond = (torch.rand(1, 1, *[size] * 3, generator=g) > 0.5).float() * 2 - 1
    space = space_of(cfg)
    if space is None:
        return x0.to(dev), cond.to(dev), 0.
    space.to(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        z = space.encode(x0.to(dev))
    _sync(dev)
    return z, F.interpolate(cond.to(dev), size=z.shape[2:], mode='nearest'), time.perf_counter() - t0

def _sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize()

def measure(way:str, size:int, channels, steps:int, ae_path) -> dict:
    "Peak memory (bytes above the state before the first step) and seconds per training step of `way` at `size`^3."
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cfg = _config(way, size, channels, ae_path)
    net = build_model(cfg, mode_of(cfg)).to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), cfg.lr)
    sch = schedule_of(cfg)
    ts, g = get_timestep_sampler(cfg.timestep_sampler, sch), torch.Generator().manual_seed(0)
    x0, cond, encode_s = _batch(cfg, size, dev)
    base = torch.cuda.memory_allocated() if dev.type == 'cuda' else _rss()
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    def forward():
        t, w = ts.sample(len(x0), generator=g)
        eps = torch.randn(x0.shape, generator=g).to(dev)
        out = net(sch.add_noise(x0, eps, t.to(dev)), sch.model_t(t).to(dev), cond=cond)
        return diffusion_loss(out, x0, eps, t.to(dev), sch, cfg.prediction, cfg.weighting, cfg.gamma, w)[0]
    def step(loss=None):
        loss = forward() if loss is None else loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    saved = {}
    def pack(x):                                        # what autograd keeps for the backward pass, once per storage
        saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = forward()
    step(loss)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps
    peak = (torch.cuda.max_memory_allocated() if dev.type == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    return dict(way=way, size=size, grid=list(x0.shape[2:]), peak_bytes=int(peak), saved_bytes=sum(saved.values()),
                step_s=dt, encode_s=encode_s, device=dev.type)

def _child(way, size, a, ae_path) -> dict:
    "`measure` in a fresh Python process (its own peak memory)."
    r = subprocess.run([sys.executable, __file__, '--one', way, str(size), '--steps', str(a.steps), '--ae', str(ae_path),
                        '--channels', *map(str, a.channels)], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ['killed'])[-1]
        return dict(way=way, size=size, error=last[:200] if r.returncode > 0 else f'killed (signal {-r.returncode}; out of memory?)')
    return json.loads(r.stdout.strip().splitlines()[-1])

def _ratios(rows):
    "Each row's peak memory and step time as ratios to `pixel` at the same size."
    ref = {r['size']: r for r in rows if r['way'] == 'pixel' and 'error' not in r}
    for r in rows:
        if 'error' not in r and r['size'] in ref:
            r['memory_ratio'] = r['peak_bytes'] / max(ref[r['size']]['peak_bytes'], 1)
            r['saved_ratio'] = r['saved_bytes'] / max(ref[r['size']]['saved_bytes'], 1)
            r['time_ratio'] = r['step_s'] / ref[r['size']]['step_s']
    return rows

def _table(rows, a) -> str:
    f = lambda r, k, fmt: fmt.format(r[k]) if k in r else '-'
    lines = ['| way | volume | UNet grid | peak memory (MiB) | vs pixel | saved for backward (MiB) | vs pixel | s/step | vs pixel | encode s |',
             '|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        if 'error' in r:
            lines.append(f"| {r['way']} | {r['size']}^3 | - | {r['error']} | - | - | - | - | - | - |")
            continue
        lines.append(f"| {r['way']} | {r['size']}^3 | {'x'.join(map(str, r['grid']))} | {r['peak_bytes'] / 2 ** 20:,.0f} | "
                     f"{f(r, 'memory_ratio', '{:.2f}x')} | {r['saved_bytes'] / 2 ** 20:,.0f} | {f(r, 'saved_ratio', '{:.2f}x')} | {r['step_s']:.3f} | {f(r, 'time_ratio', '{:.2f}x')} | {r['encode_s']:.3f} |")
    dev = rows[0].get('device', '?') if rows else '?'
    mem = 'torch.cuda.max_memory_allocated' if dev == 'cuda' else 'peak RSS (ru_maxrss) above the RSS before the step'
    return '\n'.join([f"# 3D training step against volume size (batch 1, UNet channels {list(a.channels)}, {dev}, "
                      f"CPU threads {torch.get_num_threads()})", '', *lines, '',
                      f"Peak memory: {mem}, each row in its own process. Saved for backward: the distinct tensors autograd "
                      "keeps from the forward pass (device-independent: what checkpointing removes; on the CPU the peak is "
                      f"dominated by convolution workspaces). Latent: a 3D AutoencoderKL {list(AE_CHANNELS)} "
                      "(4x per axis) encodes without gradients ('encode s'); the UNet trains on its grid. "
                      "Ratios are to pixel space at the same size, in this run."])

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/benchmarks'); p.add_argument('--sizes', type=int, nargs='+', default=[32, 64, 96, 128])
    p.add_argument('--steps', type=int, default=2); p.add_argument('--channels', type=int, nargs='+', default=[16, 32, 64, 64])
    p.add_argument('--ways', nargs='+', default=list(WAYS), choices=WAYS)
    p.add_argument('--tiny', action='store_true', help="size 16, a 2-level UNet, one step (tests)")
    p.add_argument('--one', nargs=2, help=argparse.SUPPRESS); p.add_argument('--ae', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(measure(a.one[0], int(a.one[1]), a.channels, a.steps, a.ae))); return
    if a.tiny: a.sizes, a.channels, a.steps = [16], [8, 16], 1
    if min(a.sizes + a.channels + [a.steps]) < 1: p.error('--sizes, --channels and --steps must be >= 1')
    f = 2 ** (len(a.channels) - 1)
    bad = [s for s in a.sizes if s % (4 * f)]
    if bad: p.error(f"--sizes {bad}: each size must be a multiple of {4 * f} (the autoencoder's 4 times the UNet's {f})")
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ae = AEConfig(spatial_dims=3, channels=AE_CHANNELS, nonlocal_attn=False)
        torch.manual_seed(0)
        ae_path = save_autoencoder(model_of(ae), ae, 1., Path(tmp)/'autoencoder.pt')
        rows = [_child(w, s, a, ae_path) for s in a.sizes for w in a.ways]
    rows = _ratios(rows)
    md = _table(rows, a)
    res = dict(sizes=a.sizes, channels=a.channels, steps=a.steps, threads=torch.get_num_threads(), rows=rows)
    (out/'volume.md').write_text(md + '\n'); (out/'volume.json').write_text(json.dumps(res, indent=1))
    print(md); print(f"table: {out/'volume.md'}\ndata: {out/'volume.json'}")

if __name__ == '__main__': main()

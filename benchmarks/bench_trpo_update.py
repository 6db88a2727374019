#!/usr/bin/env python
"""The MAML-TRPO meta-update (sampling excluded) of tf_maml against a PyTorch reference, on the same data.

One meta-batch is sampled once; then both implementations take the same TRPO step on it, repeatedly from
the same θ: the post-update surrogate and its gradient through the inner policy-gradient step, 10
conjugate-gradient iterations on Fisher-vector products (Hessian of the KL through the inner step; tf_maml
takes its Gauss-Newton form, exact at the sampling policy), and the backtracking line search. The reference
is written the way learn2learn's MAML-TRPO example computes it: a Python loop over tasks,
``torch.autograd.grad(create_graph=True)`` for the inner step, one KL graph kept (``retain_graph``) and
differentiated again for every Fisher-vector product.

The two are also checked against each other: the meta-gradient and the Fisher-vector product of it (tf_maml's
Gauss-Newton product against the reference's double back-propagation), an independent check of the
second-order path (relative differences printed and written to the JSON), also against the reference run in
float64, beside the reference's own float32-against-float64 difference: the round-off scale to read them on.
PyTorch is timed with 1 thread and with one per core; the faster is the reference.

    python benchmarks/bench_trpo_update.py --json benchmarks/results/trpo_update.json
    python benchmarks/bench_trpo_update.py --quick --no-torch   # tiny, for the test suite (no timing checks)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmark_results import summarize, write_results  # noqa: E402

# name: preset and overrides (HalfCheetah at the reduced batch of the BENCHMARKS.md runs; sampling it at the
# paper's 40 × 20 would take minutes and does not change what is compared).
CONFIGS = {
    "navigation2d": ("navigation2d", {}),
    "halfcheetah-vel": ("halfcheetah-vel", {"meta_batch_size": 10, "n_traj": 10, "num_envs": 10}),
}


def sample_once(name: str, quick: bool):
    """A learner of the config and one sampled meta-batch ``(pre, post)`` for it."""
    from tf_maml.rl.maml_trpo import MAMLTRPO
    from tf_maml.rl.presets import preset

    family, overrides = CONFIGS[name]
    if quick:
        overrides = {**overrides, "meta_batch_size": 2, "n_traj": 2, "num_envs": 4}
    learner = MAMLTRPO(preset(family, **overrides))
    _, _, pre, _, post = learner.sample_meta_batch(0)
    return learner, pre, post


def bench_tf(learner, pre, post, repeats: int) -> dict:
    theta = learner.theta()
    t0 = time.perf_counter()
    first = learner.meta_update(pre, post)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        learner.set_theta(theta)
        t0 = time.perf_counter()
        learner.meta_update(pre, post)
        times.append(time.perf_counter() - t0)
    learner.set_theta(theta)
    return {**summarize(times), "first_step_s": first_s, "line_search_steps": first["line_search_steps"]}


def tf_gradient_and_fvp(learner, pre, post) -> tuple[np.ndarray, np.ndarray]:
    """tf_maml's meta-gradient, and the (damped) Fisher-vector product of it that its conjugate gradient uses."""
    theta = learner.theta()
    old_mean, old_log_std, _, grad = learner._loss_grad_fn(theta, pre, post)
    hv = learner._fisher_vector_product_fn(theta, pre, post, old_mean, old_log_std, grad)
    return grad.numpy(), (hv + learner.config.cg_damping * grad).numpy()


class TorchReference:
    """MAML-TRPO's meta-update in plain PyTorch (the Gaussian MLP policy written out as tensors)."""

    def __init__(self, learner, pre, post, threads: int, float64: bool = False) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch = torch

        def tensor(x):
            t = torch.tensor(np.array(x))
            return t.double() if float64 and t.is_floating_point() else t

        self.config = learner.config
        self.min_log_std = math.log(learner.model.get_layer("gaussian_head").min_std)
        self.theta = [tensor(v.numpy()) for v in learner.model.trainable_variables]
        self.shapes = [p.shape for p in self.theta]
        self.pre = [[tensor(x) for x in data] for data in pre]
        self.post = [tensor(x) for x in post]
        self.tasks = int(self.post[0].shape[0])

    def _dist(self, params, obs):
        *layers, log_std = params
        x = obs
        for i in range(0, len(layers), 2):
            x = x @ layers[i] + layers[i + 1]
            if i + 2 < len(layers):
                x = self.torch.relu(x)
        return x, self.torch.clamp(log_std, min=self.min_log_std).expand_as(x)

    def _log_prob(self, mean, log_std, actions):
        z = (actions - mean) * self.torch.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def _adapt(self, params, task: int, create_graph: bool):
        for obs, actions, adv, mask in self.pre:
            mean, log_std = self._dist(params, obs[task])
            logp = self._log_prob(mean, log_std, actions[task])
            loss = -(logp * adv[task] * mask[task]).sum() / mask[task].sum().clamp(min=1.0)
            grads = self.torch.autograd.grad(loss, params, create_graph=create_graph)
            params = [p - self.config.fast_lr * g for p, g in zip(params, grads)]
        return params

    def _surrogate_and_kl(self, params, old, create_graph: bool):
        obs, actions, adv, mask = self.post
        losses, kl_sum = [], 0.0
        for i in range(self.tasks):
            mean, log_std = self._dist(self._adapt(params, i, create_graph), obs[i])
            old_mean, old_log_std = old[i]
            ratio = self.torch.exp(self._log_prob(mean, log_std, actions[i]) - self._log_prob(old_mean, old_log_std, actions[i]))
            losses.append(-(ratio * adv[i] * mask[i]).sum() / mask[i].sum().clamp(min=1.0))
            var_old, var = self.torch.exp(2 * old_log_std), self.torch.exp(2 * log_std)
            kl = log_std - old_log_std + (var_old + (old_mean - mean) ** 2) / (2 * var) - 0.5
            kl_sum = kl_sum + (kl.sum(-1) * mask[i]).sum()
        return self.torch.stack(losses).mean(), kl_sum / mask.sum().clamp(min=1.0)

    def _leaves(self, flat=None):
        if flat is None:
            return [p.clone().requires_grad_() for p in self.theta]
        sizes = [int(np.prod(s)) for s in self.shapes]
        return [p.reshape(s).clone().requires_grad_() for p, s in zip(self.torch.split(flat, sizes), self.shapes)]

    def _old(self, params):
        out = []
        for i in range(self.tasks):
            mean, log_std = self._dist(self._adapt(params, i, False), self.post[0][i])
            out.append((mean.detach(), log_std.detach()))
        return out

    def gradient_and_fvp(self):
        """Meta-gradient, the Fisher-vector-product function (kept graph) and the old distributions."""
        torch = self.torch
        params = self._leaves()
        old = self._old(params)
        loss, kl = self._surrogate_and_kl(params, old, create_graph=True)
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
        kl_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, params, create_graph=True)])

        def fvp(v):
            hv = torch.autograd.grad((kl_grad * v).sum(), params, retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv]) + self.config.cg_damping * v

        return loss.detach(), grad, fvp, old

    def meta_update(self) -> int:
        """One TRPO step from θ (θ itself unchanged, so repeats do the same work); returns line-search tries."""
        torch, c = self.torch, self.config
        loss, grad, fvp, old = self.gradient_and_fvp()
        x, r, p = torch.zeros_like(grad), grad.clone(), grad.clone()
        rr = r @ r
        for _ in range(c.cg_iters):
            if rr < 1e-10:
                break
            ap = fvp(p)
            alpha = rr / (p @ ap + 1e-12)
            x, r = x + alpha * p, r - alpha * ap
            rr_new = r @ r
            p, rr = r + (rr_new / rr) * p, rr_new
        full_step = x / torch.sqrt((0.5 * (x @ fvp(x))).clamp(min=1e-12) / c.max_kl)
        theta = torch.cat([p.reshape(-1) for p in self.theta])
        fraction = 1.0
        for k in range(c.ls_steps):
            new_loss, new_kl = self._surrogate_and_kl(self._leaves(theta - fraction * full_step), old, False)
            if new_loss < loss and new_kl <= c.max_kl:
                return k + 1
            fraction *= c.ls_ratio
        return c.ls_steps


def check_agreement(learner, pre, post) -> dict:
    """Relative differences of tf_maml's meta-gradient and Fisher-vector product from the reference's, in
    float32 and float64, beside the reference's own float32 round-off (float32 against float64): the scale a
    float32 difference is read on. Untimed, so on one thread (the cheapest beside other work)."""
    grad_tf, fvp_tf = tf_gradient_and_fvp(learner, pre, post)
    out = {}
    for suffix, float64 in (("", False), ("64", True)):
        ref = TorchReference(learner, pre, post, 1, float64=float64)
        torch = ref.torch
        _, grad, fvp, _ = ref.gradient_and_fvp()
        out[f"grad_rel_diff_vs_torch{suffix}"] = relative_difference(grad_tf, grad.numpy())
        out[f"fvp_rel_diff_vs_torch{suffix}"] = relative_difference(
            fvp_tf, fvp(torch.from_numpy(grad_tf).to(grad.dtype)).detach().numpy())
        out[f"_grad{suffix}"] = grad.numpy()
    out["grad_rel_diff_torch32_vs_64"] = relative_difference(out.pop("_grad"), out.pop("_grad64"))
    return out


def bench_torch(reference: TorchReference, repeats: int) -> dict:
    t0 = time.perf_counter()
    tries = reference.meta_update()
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        reference.meta_update()
        times.append(time.perf_counter() - t0)
    return {**summarize(times), "first_step_s": first_s, "line_search_steps": float(tries)}


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the benchmark works")
    parser.add_argument("--check-samples", type=int, default=0, metavar="N",
                        help="also check agreement on N further meta-batches per config (untimed)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    from tf_maml.performance import usable_cores

    threads = int(os.environ.get("BENCH_THREADS", usable_cores()))
    if args.quick:
        args.repeats = 2
    rows = []
    for name in args.configs:
        learner, pre, post = sample_once(name, args.quick)
        c = learner.config
        size = {"config": name, "meta_batch_size": c.meta_batch_size, "n_traj": c.n_traj,
                "env_steps": int(sum(float(np.sum(d.mask)) for d in (*pre, post)))}
        ref, check = None, {}
        if not args.no_torch:
            try:
                for n_threads in sorted({1, threads}):
                    reference = TorchReference(learner, pre, post, n_threads)
                    res = bench_torch(reference, args.repeats)
                    rows.append({**size, "impl": f"torch-reference-{n_threads}t", **res})
                    print(json.dumps(rows[-1]), flush=True)
                    ref = res if ref is None or res["median_s"] < ref["median_s"] else ref
                check = check_agreement(learner, pre, post)
                for iteration in range(1, args.check_samples + 1):
                    _, _, pre_i, _, post_i = learner.sample_meta_batch(iteration)
                    rows.append({**size, "impl": "agreement", "iteration": iteration,
                                 **check_agreement(learner, pre_i, post_i)})
                    print(json.dumps(rows[-1]), flush=True)
            except ImportError:
                print("PyTorch is not installed: pip install -e '.[bench-torch]' for the reference.", file=sys.stderr)
        res = bench_tf(learner, pre, post, args.repeats)
        if ref:
            res["speedup_vs_torch"] = ref["median_s"] / res["median_s"]
        rows.append({**size, "impl": "tf_maml", **res, **check})
        print(json.dumps(rows[-1]), flush=True)
        learner.close()
    print(f"\n{'config':16} {'impl':22} {'median ms':>10} {'IQR ms':>8} {'1st s':>7} {'x torch':>8} "
          f"{'grad/FVP diff':>16} {'same, float64 ref':>18} {'ref 32 vs 64':>12}")
    for r in rows:
        timed = r["impl"] != "agreement"  # agreement rows check gradients on another batch; nothing timed
        if not timed:
            r = {**r, "impl": f"agreement, batch {r['iteration']}"}
        times = (f"{1e3 * r['median_s']:10.1f} {1e3 * r['iqr_s']:8.1f} {r['first_step_s']:7.2f}" if timed
                 else f"{'':10} {'':8} {'':7}")
        speed = f"{r['speedup_vs_torch']:.2f}" if "speedup_vs_torch" in r else ""
        diff = ""
        if "grad_rel_diff_vs_torch" in r:
            vs32 = f"{r['grad_rel_diff_vs_torch']:.1e}/{r['fvp_rel_diff_vs_torch']:.1e}"
            vs64 = f"{r['grad_rel_diff_vs_torch64']:.1e}/{r['fvp_rel_diff_vs_torch64']:.1e}"
            diff = f"{vs32:>16} {vs64:>18} {r['grad_rel_diff_torch32_vs_64']:12.1e}"
        print(f"{r['config']:16} {r['impl']:22} {times} {speed:>8} {diff}")
    if args.json:
        write_results(args.json, rows, threads=threads)


if __name__ == "__main__":
    main()

"""Ray engine: one task per (family, K) group; Ray is an optional extra (``pip install poissonvae[ray]``)."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig


def _gpu_fraction(n_tasks: int) -> float:
    """Share each GPU among tasks: linear-VAE groups are small, several fit one GPU."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if not gpus:
        return 0.0
    return min(1.0, max(0.1, gpus / max(1, n_tasks)))


def run_groups_on_ray(groups: list[list[RunConfig]], sweep_dir: Path, address: str | None, progress: bool) -> list[float]:
    """Run every group as a Ray task; returns their wall times in the given order."""
    try:
        import ray
    except ImportError:
        raise ImportError("the ray engine needs Ray: pip install 'poissonvae[ray]'") from None
    from .runner import run_one_group

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=progress)
        started = True
    try:
        gpu = _gpu_fraction(len(groups))
        task = ray.remote(num_cpus=1, num_gpus=gpu)(run_one_group)
        refs = []
        for cfgs in groups:
            if gpu:
                cfgs = [RunConfig.from_dict({**c.to_dict(), "train": {**c.to_dict()["train"], "device": "cuda"}}) for c in cfgs]
            refs.append(task.remote([c.to_dict() for c in cfgs], str(Path(sweep_dir).resolve())))
        return list(ray.get(refs))
    finally:
        if started:
            ray.shutdown()

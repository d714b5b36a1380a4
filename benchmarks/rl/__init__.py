"""Multi-task reinforcement learning: Meta-World MT10 with a JAX MTSAC.

The set-up of Liu et al. (2021, CAGrad, App. B.3), which Senushkin et al.
(2023, Aligned-MTL, App. D) follow: multi-task SAC from the CARE/mtrl code
base (Sodhani et al., 2021) on Meta-World's MT10, every mtl_optax method
plugged into the actor's and the critics' updates at the parameter level.

- ``replay``: per-task replay buffers (numpy ring buffers).
- ``envs``: the ten MT10 environments, one per task, stepped together.
- ``mtsac``: networks, the per-task losses and the jitted update.
- ``mt10``: the training loop (checkpoints, resumes, JSONL log) and the
  command line, ``python -m benchmarks.rl.mt10``.
- ``results``: the table and figure from the runs' logs.

Needs the ``rl`` extra (``pip install -e '.[rl]'``: Meta-World and MuJoCo);
``--render`` also needs matplotlib (``bench``).
"""

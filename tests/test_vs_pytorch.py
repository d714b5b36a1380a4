"""benchmarks/vs_pytorch.py without PyTorch: its report logic.

The timed run needs the ``peers`` extra; what decides the table (the
convention check, the argument parsing, the rendering of a stored run) is
tested here on made-up numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import vs_pytorch


def test_convention_finds_the_scale_and_the_residual():
  theirs = np.array([1.0, -2.0, 0.5])
  t = vs_pytorch.CONVENTION_SHAPE[0]
  assert vs_pytorch.convention(theirs, theirs, 'mgda').startswith('same scale')
  assert 'sum vs mean' in vs_pytorch.convention(t * theirs, theirs, 'upgrad')
  text = vs_pytorch.convention(0.8621 * theirs, theirs, 'cagrad')
  assert text.startswith('ours = 0.8621 × theirs')
  noisy = theirs + np.array([0.0, 0.0, 0.1])
  assert 'residual 4e-02' in vs_pytorch.convention(noisy, theirs, 'mgda')
  assert vs_pytorch.convention(-theirs, theirs, 'pcgrad').startswith(
      'randomised')


def test_arguments():
  args = vs_pytorch.parse_args(['--sizes', '2x1e6,40x1e7', '--steps',
                                'lenet/theta,resnet18/z'])
  assert args.sizes == [(2, 10**6), (40, 10**7)]
  assert args.steps == [('lenet', 'theta'), ('resnet18', 'z')]
  with pytest.raises(SystemExit):
    vs_pytorch.parse_args(['--steps', 'vgg/theta'])


def test_every_shared_method_exists_on_our_side():
  import mtl_optax as mtl
  for name in vs_pytorch.SHARED_METHODS:
    method, _, variant = name.partition('/')
    assert method in mtl.registry.available()
    assert variant in ('', 'no_diagnostics')


def test_render_a_stored_run(tmp_path):
  rows = [
      {'part': 'steps', 'model': 'lenet', 'step': 'theta', 'batch': 256,
       'ours_s': [0.010, 0.012, 0.011], 'torch_s': [0.020, 0.022, 0.021],
       'ours_first_s': 1.5, 'ours_params': 22350, 'torch_params': 22350,
       'torch_threads': 2},
      {'part': 'aggregators', 'T': 40, 'P': 10**7, 'method': 'upgrad',
       'torchjd': 'UPGrad', 'ours_s': [0.2, 0.21], 'torch_s': [0.3, 0.31],
       'ours_first_s': 1.2, 'convention': 'ours = T × theirs'},
  ]
  info = {'machine': 'test CPU', 'jax': 'x', 'torch': 'y', 'torchjd': 'z',
          'argv': ['--sizes', '40x1e7', '--steps', 'lenet/theta']}
  stored = tmp_path / 'run.json'
  stored.write_text(json.dumps({'info': info, 'rows': rows}))
  out = tmp_path / 'run.md'
  assert vs_pytorch.main(['--render', str(stored), '--out', str(out)]) == 0
  text = out.read_text()
  # 11 / 21 ms and 0.205 / 0.305 s: the ratios of the medians.
  assert '| lenet | 256 | θ-level MGDA | 11.0 | 21.0 | **0.52** |' in text
  assert '| upgrad | UPGrad | 205.0 | 305.0 | **0.67** |' in text
  assert '### T = 40, P = 1e+07' in text

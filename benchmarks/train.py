"""Train one config with any method (``python -m mtl_optax.train``).

The training command line lives in the package (``mtl_optax/train.py``;
installed, it is also the ``mtl-optax-train`` command); this script runs
it, so ``python benchmarks/train.py --config multi_mnist ...`` works as
before. ``python benchmarks/train.py --help`` lists the flags.
"""

from mtl_optax.train import main

if __name__ == '__main__':
  main()

"""PyTorch / torchvision weights in the zoo's encoders.

``from_torchvision(model, weights)`` copies a torchvision state dict into a
zoo encoder, in place: ResNet-18/34/50/101 (``torchvision.models.resnet*``,
plain or dilated: dilation changes no weight), VGG-16-BN
(``torchvision.models.vgg16_bn``) and MTAN's SegNet, whose encoder half is
VGG-16-BN's thirteen convolutions (MTAN's authors train it from scratch;
SegNet's initialise it from VGG). ``model`` is the encoder itself or a
``MultiTaskModel`` (its ``encoder`` is loaded, the heads are left as they
are). ``weights`` is a state dict (names to numpy, JAX or torch arrays) or
the path of one: ``.safetensors`` (read with the ``safetensors`` package's
numpy loader, no torch needed) or a ``torch.save`` file (``.pth``, ``.pt``,
read with ``torch.load(weights_only=True)``). Nothing is downloaded: pass
a file you fetched yourself, e.g. torchvision's ``resnet50-0676ba61.pth``.

The mapping. Convolutions ``[O, I, kH, kW]`` become ``[kH, kW, I, O]``
kernels (our images are NHWC); BatchNorm ``weight, bias, running_mean,
running_var`` become ``scale, bias, mean, var`` (``num_batches_tracked`` is
read and dropped: momentum 0.1 never uses it). ResNet: ``conv1``/``bn1`` ->
``stem``; ``layer{s}.{b}.conv{k}``/``bn{k}`` -> ``stages[s-1][b].conv{k}``;
``layer{s}.{b}.downsample.0``/``.1`` -> ``.shortcut``. VGG-16-BN:
``features.{i}`` (a convolution) and ``features.{i+1}`` (its BatchNorm) ->
``blocks[j][k]``, in order.

Strict: every array of the state dict is used and every parameter and
statistic of the encoder is written, else ``ValueError`` lists the missing
and unexpected names (``ignore=('fc',)`` skips a ResNet's classifier,
``ignore=('classifier',)`` VGG's); a shape that differs names both shapes.
Nothing is written unless everything fits.

The zoo's layers compute torchvision's functions: with the same weights,
the outputs agree to float32 rounding in eval mode, and in train mode
(batch statistics) after ``layers.unbiased_running_variance(model)`` also
the running averages (PyTorch averages the unbiased batch variance, Flax
the biased one; see ``layers.BatchNorm``). Dilated ResNets match
``replace_stride_with_dilation=[False, True, True]`` (output stride 8) and
``[False, False, True]`` (16) when built with
``dilation_style='torchvision'``. ``tests/test_torchvision_weights.py``
checks all of it against torchvision.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_optax.models import base
from mtl_optax.models import layers
from mtl_optax.models import mtan
from mtl_optax.models import resnet as resnet_lib
from mtl_optax.models import vgg

Weights = str | os.PathLike | Mapping[str, Any]

# torchvision's vgg16_bn `features`: channels, 'M' a max-pool.
_VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512,
              'M', 512, 512, 512, 'M')

_LIST_LIMIT = 12


@dataclasses.dataclass(frozen=True)
class _Target:
  """One state-dict entry: where it goes and how it is laid out."""
  variable: nnx.Variable | None       # None: read and dropped
  torch_shape: tuple[int, ...] | None  # None: any (num_batches_tracked)
  to_ours: Callable[[np.ndarray], np.ndarray]
  required: bool = True


def _identity(a: np.ndarray) -> np.ndarray:
  return a


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
  return np.transpose(a, (2, 3, 1, 0))


def _conv_targets(conv: nnx.Conv, prefix: str) -> dict[str, _Target]:
  kh, kw, i, o = conv.kernel.shape
  out = {f'{prefix}.weight': _Target(conv.kernel, (o, i, kh, kw),
                                     _oihw_to_hwio)}
  if conv.bias is not None:
    out[f'{prefix}.bias'] = _Target(conv.bias, tuple(conv.bias.shape),
                                    _identity)
  return out


def _bn_targets(norm: nnx.BatchNorm, prefix: str) -> dict[str, _Target]:
  out = {}
  for theirs, ours in (('weight', norm.scale), ('bias', norm.bias),
                       ('running_mean', norm.mean), ('running_var',
                                                     norm.var)):
    if ours is None:
      raise ValueError(f'from_torchvision: the BatchNorm for {prefix!r} has '
                       f'no {theirs}; use_scale/use_bias must be True.')
    out[f'{prefix}.{theirs}'] = _Target(ours, tuple(ours.shape), _identity)
  # Absent from checkpoints saved before PyTorch 0.4.1 (torchvision's
  # resnet50-19c8e357.pth, the one MGDA-UB loads).
  out[f'{prefix}.num_batches_tracked'] = _Target(None, None, _identity,
                                                 required=False)
  return out


def _conv_bn_targets(cb: layers.ConvBN, conv: str, bn: str
                     ) -> dict[str, _Target]:
  return {**_conv_targets(cb.conv, conv), **_bn_targets(cb.norm, bn)}


def _resnet_targets(net: resnet_lib.ResNet) -> dict[str, _Target]:
  out = _conv_bn_targets(net.stem, 'conv1', 'bn1')
  for s, stage in enumerate(net.stages):
    for b, block in enumerate(stage):
      p = f'layer{s + 1}.{b}'
      convs = (('conv1', 'bn1'), ('conv2', 'bn2'))
      if isinstance(block, resnet_lib.Bottleneck):
        convs += (('conv3', 'bn3'),)
      for conv, bn in convs:
        out.update(_conv_bn_targets(getattr(block, conv), f'{p}.{conv}',
                                    f'{p}.{bn}'))
      if block.shortcut is not None:
        out.update(_conv_bn_targets(block.shortcut, f'{p}.downsample.0',
                                    f'{p}.downsample.1'))
  return out


def _vgg_targets(conv_bns: list[layers.ConvBN]) -> dict[str, _Target]:
  """The 13 ConvBNs of a VGG-16-BN in order -> ``features.{i}``."""
  indices, i = [], 0
  for v in _VGG16_CFG:
    if v == 'M':
      i += 1
    else:
      indices.append(i)   # conv i, BatchNorm i + 1, ReLU i + 2
      i += 3
  if len(conv_bns) != len(indices):
    raise ValueError(f'from_torchvision: expected {len(indices)} VGG-16 '
                     f'convolutions; the model has {len(conv_bns)}.')
  out = {}
  for cb, j in zip(conv_bns, indices):
    out.update(_conv_bn_targets(cb, f'features.{j}', f'features.{j + 1}'))
  return out


def _segnet_conv_bns(net: mtan.SegNet) -> list[layers.ConvBN]:
  out = []
  for level in range(5):
    out.append(net.encoder_first[level].layers[0])
    out.extend(seq.layers[0] for seq in net.encoder_rest[level].layers)
  return out


def _encoder(model: nnx.Module) -> nnx.Module:
  return model.encoder if isinstance(model, base.MultiTaskModel) else model


def _describe(net: nnx.Module) -> str:
  if isinstance(net, resnet_lib.ResNet):
    depth = next((d for d, sizes in resnet_lib.STAGE_SIZES.items()
                  if sizes == tuple(len(s) for s in net.stages)
                  and (d >= 50) == isinstance(net.stages[0][0],
                                              resnet_lib.Bottleneck)), None)
    name = f'ResNet-{depth}' if depth else 'a ResNet'
    return f'{name} ({net.stem_kind} stem, width {net.stem.conv.out_features})'
  if isinstance(net, vgg.VGG16):
    return 'VGG-16-BN'
  return "MTAN's SegNet (its VGG-16-BN encoder half)"


def _targets(net: nnx.Module) -> dict[str, _Target]:
  if isinstance(net, resnet_lib.ResNet):
    return _resnet_targets(net)
  if isinstance(net, vgg.VGG16):
    return _vgg_targets([cb for block in net.blocks for cb in block])
  if isinstance(net, mtan.SegNet):
    return _vgg_targets(_segnet_conv_bns(net))
  raise TypeError(
      'from_torchvision: no torchvision backbone for '
      f'{type(net).__name__}; supported: models.resnet.ResNet, '
      'models.vgg.VGG16, models.mtan.SegNet, or a MultiTaskModel whose '
      'encoder is one of them.')


# -- reading state dicts -----------------------------------------------------


def _to_numpy(name: str, value: Any) -> np.ndarray:
  if hasattr(value, 'detach') and hasattr(value, 'cpu'):   # a torch tensor
    value = value.detach().cpu()
    if not value.dtype.is_floating_point or value.dtype.itemsize >= 4:
      return value.numpy()
    return value.float().numpy()   # float16 / bfloat16: numpy has no bf16
  if isinstance(value, Mapping):
    raise TypeError(
        f'from_torchvision: {name!r} holds a dict ({sorted(value)[:5]} ...), '
        'not an array: pass the state dict itself, e.g. '
        f"torch.load(path, weights_only=True)[{name!r}].")
  try:
    return np.asarray(value)
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(f'from_torchvision: {name!r} is a '
                    f'{type(value).__name__}, not an array.') from e


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a state dict file as ``{name: numpy array}``.

  ``.safetensors``: with ``safetensors.numpy`` (``pip install
  safetensors``; no torch needed). Anything else (``.pth``, ``.pt``,
  ``.bin``): ``torch.load(path, map_location='cpu', weights_only=True)``
  (needs torch; the CPU wheel is enough: ``pip install torch --index-url
  https://download.pytorch.org/whl/cpu``).

  Args:
    path: the file.

  Returns:
    The arrays by name.

  Raises:
    FileNotFoundError: no such file.
    ImportError: the reader's package is not installed.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'from_torchvision: no file {str(path)!r}; '
                            'nothing is downloaded, pass a file you fetched.')
  if path.suffix == '.safetensors':
    try:
      from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          f'reading {path.name} needs safetensors: pip install safetensors '
          "(or pip install 'mtl-optax[torch]').") from e
    return dict(st_numpy.load_file(str(path)))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'reading {path.name} (a torch.save file) needs PyTorch: pip install '
        'torch --index-url https://download.pytorch.org/whl/cpu; or convert '
        'it to .safetensors, which needs only the safetensors package.') from e
  obj = torch.load(str(path), map_location='cpu', weights_only=True)
  if not isinstance(obj, Mapping):
    raise TypeError(f'from_torchvision: {path.name} holds a '
                    f'{type(obj).__name__}, not a state dict.')
  return {k: _to_numpy(k, v) for k, v in obj.items()}


def _as_state_dict(weights: Weights) -> dict[str, np.ndarray]:
  if isinstance(weights, (str, os.PathLike)):
    return load_state_dict(weights)
  if not isinstance(weights, Mapping):
    raise TypeError('from_torchvision: weights must be a path or a mapping '
                    f'name -> array; got {type(weights).__name__}.')
  return {k: _to_numpy(k, v) for k, v in weights.items()}


# -- the check and the copy --------------------------------------------------


def _ignored(key: str, ignore: Iterable[str]) -> bool:
  return any(key == p or key.startswith(p.rstrip('.') + '.') for p in ignore)


def _listing(keys: list[str]) -> str:
  shown = ', '.join(keys[:_LIST_LIMIT])
  more = len(keys) - _LIST_LIMIT
  return shown + (f' ... and {more} more' if more > 0 else '')


def _resnet_layout(keys: Iterable[str]) -> str | None:
  """'bottleneck blocks (3, 4, 6, 3)' from a ResNet state dict's names."""
  blocks, bottleneck = {}, False
  for k in keys:
    m = re.match(r'layer(\d+)\.(\d+)\.(conv\d)', k)
    if m:
      s, b = int(m.group(1)), int(m.group(2))
      blocks[s] = max(blocks.get(s, 0), b + 1)
      bottleneck |= m.group(3) == 'conv3'
  if not blocks:
    return None
  counts = tuple(blocks[s] for s in sorted(blocks))
  return f"{'bottleneck' if bottleneck else 'basic'} blocks {counts}"


def _mismatch_message(net, targets, state, missing, unexpected, shapes,
                      ignore) -> str:
  lines = [f'from_torchvision: the state dict does not fit {_describe(net)}.']
  if missing:
    lines.append(f'  missing ({len(missing)}): {_listing(missing)}')
  if unexpected:
    lines.append(f'  unexpected ({len(unexpected)}): {_listing(unexpected)}')
  for key, theirs, ours in shapes:
    lines.append(f'  {key}: the state dict has shape {theirs}, the model '
                 f'needs {ours} (PyTorch layout)')
  heads = sorted({k.split('.')[0] for k in unexpected
                  if k.split('.')[0] in ('fc', 'classifier')})
  if heads:
    names = ', '.join(f"'{h}.*'" for h in heads)
    lines.append(
        f'  Pass the backbone\'s state dict: the classifier {names} is not '
        f'part of the encoder; skip it with ignore={tuple(heads)!r}.')
  if isinstance(net, resnet_lib.ResNet):
    theirs = _resnet_layout(state)
    ours = _resnet_layout(targets)
    if theirs and theirs != ours:
      lines.append(f'  The state dict has a ResNet with {theirs}; the model '
                   f'has {ours}.')
    if net.stem_kind == 'cifar' and any(k == 'conv1.weight'
                                        for k, _, _ in shapes):
      lines.append("  This ResNet has the CIFAR stem (3×3, stride 1); "
                   "torchvision's ResNets have the ImageNet 7×7 stem "
                   "(stem='imagenet').")
  if ignore:
    lines.append(f'  (ignored: {tuple(ignore)!r})')
  return '\n'.join(lines)


def from_torchvision(model: nnx.Module, weights: Weights, *,
                     ignore: Iterable[str] = ()) -> nnx.Module:
  """Loads a torchvision state dict into ``model``'s encoder, in place.

  Args:
    model: a ``MultiTaskModel`` (its ``encoder`` is loaded; the heads keep
      their values) or an encoder: ``models.resnet.ResNet`` (depth 18, 34,
      50, 101; plain or dilated), ``models.vgg.VGG16`` or
      ``models.mtan.SegNet`` (its encoder half, from ``vgg16_bn``).
    weights: a state dict (name -> numpy, JAX or torch array) or a path:
      ``.safetensors`` or a ``torch.save`` file (``.pth``); see
      ``load_state_dict``.
    ignore: names or dotted prefixes of the state dict to skip, e.g.
      ``('fc',)`` for a ResNet's classifier, ``('classifier',)`` for VGG's.

  Returns:
    ``model``, with the encoder's kernels, biases, BatchNorm scales, biases
    and running statistics replaced.

  Raises:
    ValueError: a name of the state dict that the encoder lacks (and is not
      ignored), a parameter the state dict lacks, or a shape that differs;
      the message lists them all. Nothing is written then.
    TypeError: an unsupported model or a value that is not an array.

  Example:
    >>> import numpy as np
    >>> from mtl_optax import models
    >>> model = models.create('resnet34_7scenes', width=8, rngs=0)
    >>> state = {'conv1.weight': np.zeros((8, 3, 7, 7), np.float32)}
    >>> models.from_torchvision(model, state)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: from_torchvision: the state dict does not fit ResNet-34 (imagenet stem, width 8).
      missing (179): bn1.weight, bn1.bias, ...
  """
  net = _encoder(model)
  targets = _targets(net)
  state = _as_state_dict(weights)
  ignore = tuple(ignore)
  used = {k: v for k, v in state.items() if not _ignored(k, ignore)}
  unexpected = [k for k in used if k not in targets]
  missing = [k for k, t in targets.items() if t.required and k not in used]
  shapes = []
  for k, v in used.items():
    t = targets.get(k)
    if t is not None and t.torch_shape is not None and (
        tuple(v.shape) != t.torch_shape):
      shapes.append((k, tuple(v.shape), t.torch_shape))
  if missing or unexpected or shapes:
    raise ValueError(_mismatch_message(net, targets, used, missing,
                                       unexpected, shapes, ignore))
  for k, v in used.items():
    t = targets[k]
    if t.variable is None:
      continue
    old = t.variable.get_value()
    # A copy: on CPU, JAX may alias a numpy buffer, and a torch tensor's
    # numpy view is the tensor's memory (which torch updates in place).
    value = jnp.asarray(np.array(t.to_ours(v), dtype=old.dtype, copy=True))
    sharding = getattr(old, 'sharding', None)
    if sharding is not None:
      value = jax.device_put(value, sharding)
    t.variable.set_value(value)
  return model

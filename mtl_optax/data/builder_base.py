"""The common base of this package's tfds builders."""

from __future__ import annotations

import hashlib
import os
from typing import ClassVar

import tensorflow_datasets as tfds


def sha256(path: str | os.PathLike) -> str:
  """Hex SHA256 of a file."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder,
                         skip_registration=True):
  """A ``GeneratorBasedBuilder`` that writes ArrayRecord files by default.

  ArrayRecord is what ``tfds.data_source`` reads by random access, and writing
  it with ``tfds.features.Tensor`` features needs no TensorFlow.

  Builders that download list their files in ``FILES`` (file name -> URL,
  size, SHA256): ``_fetch_files`` takes them from the manual directory when it
  holds all of them, else downloads them with tfds' download manager (which
  checks size and SHA256 through ``url_infos``), and checks every file's
  SHA256 (``verify_checksums=False`` skips that, for hand-made test files).
  Builders without ``FILES`` have ``url_infos = None``, which also spares
  tfds the look-up of a ``checksums.tsv`` next to the code (for a builder in
  an installed package that look-up imports the optional
  ``importlib_resources``).

  Args:
    verify_checksums: check the SHA256 of the files in ``FILES``.
    **kwargs: tfds' ``data_dir``, ``config``, ``version``, ``file_format``
      (default ``'array_record'``).
  """

  FILES: ClassVar[dict[str, tuple[str, int, str]]] = {}

  def __init__(self, *, verify_checksums: bool = True, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    self._verify_checksums = verify_checksums
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    if not cls.FILES:
      return None
    return {
        url: tfds.core.download.checksums.UrlInfo(
            size=size, checksum=digest, filename=name)
        for name, (url, size, digest) in cls.FILES.items()
    }

  def _fetch_files(self, dl_manager) -> dict[str, os.PathLike]:
    """``FILES`` from the manual directory or downloaded, SHA256-checked."""
    try:
      manual = dl_manager.manual_dir
    except AssertionError:  # no manual directory, or an empty one
      manual = None
    if manual is not None and all((manual / f).exists() for f in self.FILES):
      paths = {name: manual / name for name in self.FILES}
    else:
      paths = dl_manager.download(
          {name: url for name, (url, _, _) in self.FILES.items()})
    if self._verify_checksums:
      for name, path in paths.items():
        got, expected = sha256(path), self.FILES[name][2]
        if got != expected:
          raise ValueError(f'{path}: SHA256 {got} does not match the '
                           f'published {expected} of {name}.')
    return paths

  def as_prepared_source(self, split: str):
    """``as_data_source(split)``, with a clear error if not prepared yet."""
    if not self.is_prepared():
      raise FileNotFoundError(
          f'{self.name} is not prepared in {self.data_dir}: run `'
          f'{type(self).__name__}(data_dir=...).download_and_prepare('
          'download_config=tfds.download.DownloadConfig(manual_dir=...))` '
          'first (see the module doc).')
    return self.as_data_source(split=split)

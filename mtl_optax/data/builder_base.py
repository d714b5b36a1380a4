"""The common base of this package's tfds builders."""

from __future__ import annotations

import hashlib
import os
from typing import ClassVar, Sequence

import tensorflow_datasets as tfds


def sha256(path: str | os.PathLike) -> str:
  """Hex SHA256 of a file."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


class DatasetInfo(tfds.core.DatasetInfo):
  """``tfds.core.DatasetInfo`` of a dataset tfds does not host.

  A builder made for a directory that holds no prepared copy asks
  ``initialize_from_bucket`` for tfds' pre-computed metadata on GCS. None
  exists for this package's datasets, and tfds 4.9 makes a temporary
  directory before it looks and never removes it: one empty
  ``/tmp/tmp*tfds`` per builder made (every prepare command, every
  "not prepared" check). This info skips the look-up.
  """

  def initialize_from_bucket(self) -> None:
    """Nothing: this package's datasets have no metadata on GCS."""


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder,
                         skip_registration=True):
  """A ``GeneratorBasedBuilder`` that writes ArrayRecord files by default.

  ArrayRecord is what ``tfds.data_source`` reads by random access, and writing
  it with ``tfds.features.Tensor`` features needs no TensorFlow.

  Builders that download list their files in ``FILES`` (file name -> URL,
  size, SHA256): ``_fetch_files`` takes them from the manual directory when it
  holds all of them, else, only when asked (``download=True``), downloads
  them with tfds' download manager (which checks size and SHA256 through
  ``url_infos``); otherwise it raises ``FileNotFoundError`` at once (no
  network access). Every file's SHA256 is checked (``verify_checksums=False``
  skips that, for hand-made test files).
  Builders without ``FILES`` have ``url_infos = None``, which also spares
  tfds the look-up of a ``checksums.tsv`` next to the code (for a builder in
  an installed package that look-up imports the optional
  ``importlib_resources``).

  Args:
    verify_checksums: check the SHA256 of the files in ``FILES``.
    download: download the files in ``FILES`` that the manual directory does
      not hold (default False: a missing file is an error).
    **kwargs: tfds' ``data_dir``, ``config``, ``version``, ``file_format``
      (default ``'array_record'``).
  """

  FILES: ClassVar[dict[str, tuple[str, int, str]]] = {}
  # The dataset's name for `python -m mtl_optax.data.prepare NAME` (default:
  # the builder's name).
  PREPARE_NAME: ClassVar[str | None] = None
  # How the user gives the manual directory (for the messages).
  MANUAL_DIR_OPTION: ClassVar[str] = '--manual-dir / manual_dir='

  def __init__(self, *, verify_checksums: bool = True, download: bool = False,
               **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    self._verify_checksums = verify_checksums
    self._download = download
    super().__init__(**kwargs)

  @classmethod
  def manual_contents(cls) -> str:
    """What the manual directory must hold, as a sentence."""
    if cls.FILES:
      return f'The manual directory must hold {", ".join(cls.FILES)}.'
    return (cls.MANUAL_DOWNLOAD_INSTRUCTIONS
            or "See the dataset's module doc for its source files.")

  @classmethod
  def check_manual_dir(cls, manual_dir: str | os.PathLike | None, *,
                       option: str = '--manual-dir',
                       download: bool = False) -> None:
    """Fails at once, naming the path, if ``manual_dir`` cannot be used.

    Args:
      manual_dir: the directory given, or None.
      option: how the user gave it (for the message).
      download: whether missing ``FILES`` may be downloaded.

    Raises:
      FileNotFoundError: ``manual_dir`` is given but is not a directory; or
        it is None and the dataset has no ``FILES`` to download, or
        ``download`` is False.
    """
    if manual_dir is not None:
      if not os.path.isdir(manual_dir):
        raise FileNotFoundError(
            f'{option} {os.fspath(manual_dir)!r} does not exist (or is not a '
            f'directory). {cls.manual_contents()}')
      return
    if cls.FILES and download:
      return
    fix = f'give {option} DIR'
    if cls.FILES:
      fix += ', or --download (download=True) to fetch the files'
    raise FileNotFoundError(
        f'{cls.name} needs its source files: {fix}. {cls.manual_contents()}')

  def _missing_files_error(self, manual, missing: Sequence[str]
                           ) -> FileNotFoundError:
    if manual is None:
      where = 'no manual directory was given'
    elif os.path.isdir(manual) and os.listdir(manual):
      where = f'{os.fspath(manual)!r} lacks {", ".join(missing)}'
    else:
      where = f'{os.fspath(manual)!r} does not exist or is empty'
    sources = sorted({url.rsplit('/', 1)[0] + '/'
                      for url, _, _ in self.FILES.values()})
    return FileNotFoundError(
        f'{self.name} needs {", ".join(self.FILES)}, and {where}. Give a '
        f'directory holding them ({self.MANUAL_DIR_OPTION}), or pass '
        f'--download (download=True) to fetch them from {", ".join(sources)}.')

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
    missing = [f for f in self.FILES
               if manual is None or not (manual / f).exists()]
    if manual is None:   # where tfds looked (its default if none was given)
      manual = getattr(dl_manager, '_manual_dir', None)
    if not missing:
      paths = {name: manual / name for name in self.FILES}
    elif self._download:
      paths = dl_manager.download(
          {name: url for name, (url, _, _) in self.FILES.items()})
    else:
      raise self._missing_files_error(manual, missing)
    if self._verify_checksums:
      for name, path in paths.items():
        got, expected = sha256(path), self.FILES[name][2]
        if got != expected:
          raise ValueError(f'{path}: SHA256 {got} does not match the '
                           f'published {expected} of {name}.')
    return paths

  def prepare_command(self, data_dir: str) -> str:
    """The README's command that prepares this builder in ``data_dir``."""
    command = (f'python -m mtl_optax.data.prepare '
               f'{self.PREPARE_NAME or self.name} --data-dir {data_dir}')
    if self.BUILDER_CONFIGS:
      command += f' --config {self.builder_config.name}'
    command += ' --manual-dir DIR'
    if self.FILES:
      command += '  (or --download instead of --manual-dir)'
    return command

  def as_prepared_source(self, split: str):
    """``as_data_source(split)``, with a clear error if not prepared yet."""
    if not self.is_prepared():
      root = os.fspath(getattr(self, '_data_dir_root', None) or 'DATA')
      raise FileNotFoundError(
          f'{self.name} is not prepared in {self.data_dir}. Prepare it once '
          f'(README, "Data"):\n  {self.prepare_command(root)}\n'
          f'{self.manual_contents()}')
    return self.as_data_source(split=split)

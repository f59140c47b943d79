"""Atomic file outputs: a temporary file in the destination's folder, fsync, then `os.replace`.

A reader never sees a half-written file, and a failed write (full or read-only disk, missing
folder) leaves the old file, if any, untouched and no temporary file behind. Every failure is an
`OutputError` whose message names the destination path and the reason, so launchers can report
it without a traceback (`ovsnet_jax.cli.run`).

  atomic_io.write_json(results, 'out/eval_ade150.json')
  atomic_io.write_bytes(png_bytes, 'out/seg.png')
  with atomic_io.open_atomic('out/labels.png', 'wb') as f: image.save(f, format='PNG')
  with atomic_io.path_atomic('out/w.safetensors') as tmp: save_file(arrays, tmp)  # libraries that take a path
"""
import contextlib
import errno
import json
import os
import tempfile
from typing import Any, Iterator


class OutputError(OSError):
  """An output could not be written; the message names the path and why."""

  def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
    return self.strerror or super().__str__()


def _reason(e: OSError) -> str:
  if e.errno == errno.ENOSPC:
    return 'no space left on the device'
  if e.errno in (errno.EROFS,):
    return 'read-only file system'
  if e.errno in (errno.EACCES, errno.EPERM):
    return 'permission denied'
  return e.strerror or str(e)


@contextlib.contextmanager
def open_atomic(path: str, mode: str = 'w', **kwargs) -> Iterator[Any]:
  """A file object for `path` ('w' or 'wb'); the file appears at `path` only if the block succeeds."""
  if mode not in ('w', 'wb'):
    raise ValueError(f"open_atomic: mode must be 'w' or 'wb', got {mode!r}")
  with path_atomic(path) as tmp:
    try:
      with open(tmp, mode, **kwargs) as f:
        yield f
    except OSError as e:
      if isinstance(e, OutputError):
        raise
      raise OutputError(e.errno, f'cannot write {path}: {_reason(e)}') from e


@contextlib.contextmanager
def path_atomic(path: str) -> Iterator[str]:
  """A temporary path for a library that writes a file by name; renamed to `path` if the block succeeds."""
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    os.close(fd)
  except OSError as e:
    raise OutputError(e.errno, f'cannot write {path}: {_reason(e)}') from e
  try:
    yield tmp
    with open(tmp, 'rb+') as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except OSError as e:
    _remove_quietly(tmp)
    if isinstance(e, OutputError):
      raise
    raise OutputError(e.errno, f'cannot write {path}: {_reason(e)}') from e
  except BaseException:
    _remove_quietly(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


def write_bytes(data: bytes, path: str) -> None:
  with open_atomic(path, 'wb') as f:
    f.write(data)


def write_text(text: str, path: str) -> None:
  with open_atomic(path, 'w', encoding='utf-8') as f:
    f.write(text)


def write_json(obj: Any, path: str, **dump_kwargs) -> None:
  """`json.dump(obj)` atomically; the object is serialised first, so a bad value writes nothing."""
  dump_kwargs.setdefault('indent', 1)
  write_text(json.dumps(obj, **dump_kwargs), path)

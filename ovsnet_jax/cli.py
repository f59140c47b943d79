"""What every launcher shares: expected failures become one clear line, not a traceback.

  from ovsnet_jax import cli
  if __name__ == '__main__':
    cli.run(main)          # instead of absl.app.run(main)

`UserError` (bad input: a file, a field, a value), `atomic_io.OutputError` (an output that could not
be written) and the OS errors of reading a named file are printed as `error: <message>` on stderr
with exit code 2. Anything else is a bug and keeps its traceback. `verbose_logs(False)` turns absl's
and orbax's INFO lines off unless `--verbosity` was given. `run` also turns on JAX's persistent
compilation cache (`compilation_cache.enable`: under the user cache; `OVSNET_COMPILATION_CACHE=off`
disables it, `OVSNET_COMPILATION_CACHE=DIR` or `JAX_COMPILATION_CACHE_DIR=DIR` moves it).
"""
import sys

from absl import app
from absl import flags
from absl import logging

from ovsnet_jax import atomic_io
from ovsnet_jax import compilation_cache

EXIT_USER_ERROR = 2


class UserError(Exception):
  """Bad input from the user: the message names the file, flag or config field and what was expected."""


EXPECTED = (UserError, atomic_io.OutputError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError)


def quiet_logs() -> None:
  """absl/orbax INFO lines off unless the user passed --verbosity."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def run(main, *args, **kwargs) -> None:
  """`absl.app.run(main)` with expected failures reported as one line and exit code 2."""
  def wrapped(argv):
    compilation_cache.enable()
    try:
      return main(argv)
    except EXPECTED as e:
      print(f'error: {e}', file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)
  app.run(wrapped, *args, **kwargs)

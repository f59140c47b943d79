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


def _flag_error(e: Exception, argv: list) -> str:
  """One line for an error raised while parsing the flags (config files and `--config.*` fields)."""
  if isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):
    e = e.args[0]  # ml_collections wraps an unknown top-level field's KeyError
  if isinstance(e, KeyError):  # ml_collections: an override of a field the config does not have
    text = str(e.args[0]) if e.args else '?'
    if 'Attempting to lookup: ' in text:  # a field below a value that is not a ConfigDict
      return f'unknown config field --config.{text.split("Attempting to lookup: ")[-1]}: {text.split(". ")[0]}'
    name = text.strip('"\'')
    culprits = [a.split('=')[0] for a in argv if a.startswith('--') and name in a.split('=')[0].split('.')[1:]]
    return (f'unknown config field {name!r} in {" ".join(culprits) or "a --config.* override"} '
            '(see the config file for the fields it defines)')
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  lines = [line for line in lines if not line.startswith(('Traceback', 'File ', '^', 'Pass --help', 'Attempted'))
           and not line.startswith(('raise ', 'config = ', 'config_module'))]
  if len(lines) > 2:  # "flag --config=...: Error whilst parsing config file:" ... "ValueError: <why>"
    lines = [lines[0], lines[-1]]
  return ' '.join(lines)[:500] or type(e).__name__


def _parse_flags(argv: list) -> list:
  """absl's flag parsing with every failure (flags, config files, `--config.*` fields) as one line."""
  try:
    rest = flags.FLAGS(argv)
    for name in flags.FLAGS:
      value = flags.FLAGS[name].value
      if type(value).__name__ == '_ErrorConfig':  # ml_collections defers a config file's load error
        value._ReportError()  # pylint: disable=protected-access
  except (flags.Error, KeyError, AttributeError, OSError, ValueError, TypeError) as e:
    print(f'error: {_flag_error(e, argv)}', file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
  return rest


def run(main, *args, **kwargs) -> None:
  """`absl.app.run(main)` with expected failures reported as one line and exit code 2.

  Flag errors too are one line: an unknown `--config.a.b` field (ml_collections raises KeyError
  while absl parses), a config file that cannot be loaded or rejects its argument
  (`--config=file.py:variant`), a value of the wrong type.
  """
  def wrapped(argv):
    compilation_cache.enable()
    try:
      return main(argv)
    except EXPECTED as e:
      print(f'error: {e}', file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)
  kwargs.setdefault('flags_parser', _parse_flags)
  app.run(wrapped, *args, **kwargs)


def run_argparse(main, expected: tuple = ()) -> None:
  """`sys.exit(main())` for argparse launchers, with `EXPECTED` (and `expected`) errors as one line, exit code 2."""
  try:
    code = main()
  except EXPECTED + tuple(expected) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
  sys.exit(code)

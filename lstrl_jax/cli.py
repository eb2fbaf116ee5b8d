"""What every command (`python -m lstrl_jax.<command>`, train.py, eval.py) shares: exit statuses and errors.

DESIGN.md section 6: a command exits 0 when done; 1 for an error in data, checkpoint or values; 2 for a usage
error (unknown flag, mistyped config key, wrong type, missing required flag); 75 when it stopped but can be
resumed by running the same command again (SIGTERM, Ctrl-C, preemption, `stop_at_step`). Each error is one
`error: ...` line on stderr, never a traceback.

A command defines its absl flags, then hands its `main(argv)` to `run`, which parses the flags, turns flag and
config-override mistakes into one usage line, and turns the error types the command names into one error
line.
"""

from __future__ import annotations

import re
import sys
from typing import Callable, NoReturn, Sequence

from absl import app
from absl import flags

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_RESUMABLE = 75


class UsageError(Exception):
  """The command line is wrong (a flag, a config key, a value's type): one line, exit status 2."""


class Resumable(Exception):
  """The run stopped with a checkpoint saved (SIGTERM, Ctrl-C, `stop_at_step`): exit status 75.

  The message says where the checkpoint is; running the same command again resumes.
  """


def one_line(error: BaseException | str) -> str:
  """`error`'s message on one line: newlines folded, the quoting of KeyError/AttributeError reprs removed.

  ml_collections reports a mistyped key as AttributeError("'num_epoch'\\nDid you mean \\"num_epochs\\" ...");
  this gives `'num_epoch': did you mean "num_epochs" instead of "num_epoch"?`.
  """
  text = error if isinstance(error, str) else str(error)
  for _ in range(3):  # KeyError(str(AttributeError(...))) nests the quoting
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"':
      text = text[1:-1].encode('latin-1', 'backslashreplace').decode('unicode_escape')
    else:
      break
  text = re.sub(r'\s*\n\s*Did you mean', ': did you mean', text)
  return ' '.join(text.split())


def fail(message: BaseException | str, status: int = EXIT_ERROR) -> NoReturn:
  """Prints `error: <message>` as one line on stderr and exits with `status`."""
  print(f'error: {one_line(message)}', file=sys.stderr, flush=True)
  sys.exit(status)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing with every mistake (unknown flag, bad override, missing flag) as one usage line."""
  try:
    rest = flags.FLAGS(list(argv))
    for name in flags.FLAGS:  # config_flags defers a config file's load error to the first attribute read
      getattr(flags.FLAGS[name].value, 'keys', None)
    return rest
  except flags.Error as error:
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith('Traceback'):  # config_flags appends the config file's traceback
      lines = [lines[0], lines[-1]]
    fail(' '.join(lines), EXIT_USAGE)
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as error:  # a mistyped key, a bad type
    fail(error, EXIT_USAGE)


def run(main: Callable[[list[str]], int | None], *,
        errors: tuple[type[BaseException], ...] = (ValueError,)) -> NoReturn:
  """Runs an absl `main` under the exit-status contract above.

  Args:
    main: the command, called with the positional arguments left after flag parsing (argv[0] first); it
      returns an exit status or None (0). Extra positional arguments are a usage error before `main` runs.
    errors: exception types that are the user's data, checkpoint or value errors: printed as one line,
      exit status 1. `UsageError` always exits 2 and `Resumable` 75, with their message on one line
      (`Resumable`'s on stdout, since it is not an error).

  Raises:
    SystemExit: always, with the status.
  """

  def wrapped(argv: list[str]) -> int | None:
    if len(argv) > 1:
      fail(f'unexpected arguments: {" ".join(argv[1:])}', EXIT_USAGE)
    try:
      return main(argv)
    except UsageError as error:
      fail(error, EXIT_USAGE)
    except Resumable as error:
      print(one_line(error), flush=True)
      sys.exit(EXIT_RESUMABLE)
    except errors as error:
      fail(error, EXIT_ERROR)

  try:
    app.run(wrapped, flags_parser=_parse_flags)
  except flags.IllegalFlagValueError as error:  # a required flag left unset (checked after parsing)
    fail(error, EXIT_USAGE)
  raise AssertionError('app.run returned')  # pragma: no cover

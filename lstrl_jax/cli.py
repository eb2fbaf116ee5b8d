"""What every command (`python -m lstrl_jax.<command>`, train.py, eval.py) shares: exit statuses and errors.

DESIGN.md section 6: a command exits 0 when done; 1 for an error in data, checkpoint or values; 2 for a usage
error (unknown flag, mistyped config key, wrong type, missing required flag); 75 when it stopped but can be
resumed by running the same command again (SIGTERM, Ctrl-C, preemption, `stop_at_step`). Each error is one
`error: ...` line on stderr, never a traceback.

A command hands `run` a function defining its absl flags and its `main(argv)`; `run` defines the flags (a
mistyped `--config.<key>` of a config defined inline is found right then), parses them, turns flag and
config-override mistakes into one usage line, and turns the error types the command names into one error
line. `--help` (`-h`, `-?`, `--helpshort`, `--helpfull`) prints the command's docstring, its flags and the
config keys as a tree with their values, and exits 0, importing nothing heavier than absl and
ml_collections. `--config` names a config file by path or a shipped config by name (`demo`, `mars:smoke`,
the files of `lstrl_jax/configs/`), from any working directory.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_RESUMABLE = 75
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / 'configs'  # the shipped configs (`lstrl_jax.configs`)
HELP_ARGS = ('-h', '-?', '-help', '--help', '--helpshort', '--helpfull')


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


def drop_closed_loop_reports() -> Callable[[Any], object]:
  """From now on, drops the `sys.unraisablehook` reports of `RuntimeError: Event loop is closed`.

  After a failed checkpoint read or write, tensorstore completes the operation's other reads and writes on the
  event loop orbax has already closed, and reports each this way, from its own threads, at any later moment
  (also after a command printed its one error line, so `run` drops them for the whole command). Every other
  unraisable exception still goes to the previous hook, which is returned so that a caller can restore it.
  """
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == 'Event loop is closed'):
      previous_hook(unraisable)

  sys.unraisablehook = hook
  return previous_hook


def checkpoint_errors() -> tuple[type[BaseException], ...]:
  """The errors of a command that loads a checkpoint and data: ValueError (DatasetError, EvaluationError and
  FeaturesError are ValueErrors) and CheckpointError, one line and exit status 1. Imported when the command
  runs, not at `--help` (pass the function itself as `run`'s `errors`)."""
  from lstrl_jax.train.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top

  return ValueError, CheckpointError


def quiet_logging(level: int) -> None:
  """Limits absl logging to `level` (e.g. `logging.ERROR`: absl apps log INFO to stderr, and orbax and grain log
  every save) unless the user passed `--verbosity`."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(level)


def module_doc(name: str) -> str:
  """The docstring of module `name`, read from its source without importing it (a command's `--help` text,
  so `--help` does not wait for the JAX imports of the module that implements the command)."""
  return ast.get_docstring(ast.parse(pathlib.Path(importlib.util.find_spec(name).origin).read_text())) or ''


def shipped_configs() -> list[str]:
  """Names of the configs shipped in the package (`lstrl_jax/configs/<name>.py`), sorted."""
  return sorted(p.stem for p in CONFIG_DIR.glob('*.py') if not p.stem.startswith('_'))


def resolve_config(value: str) -> str:
  """A `--config` value as a path: `<file>[:<variant>]` as given, or a shipped config's name made its path.

  `demo` and `demo.py` (with or without `:smoke`) name `lstrl_jax/configs/demo.py` unless a file of that
  name exists in the working directory.

  Raises:
    UsageError: neither a file nor a shipped config, naming the shipped ones.
  """
  path, colon, variant = value.partition(':')
  if os.path.isfile(os.path.expanduser(path)):
    return os.path.expanduser(path) + colon + variant
  shipped = CONFIG_DIR / (path if path.endswith('.py') else f'{path}.py')
  if os.sep not in path and shipped.is_file():
    return f'{shipped}{colon}{variant}'
  raise UsageError(f'--config {value}: no such config file; expected a path to a config .py file or one of the '
                   f'shipped configs: {", ".join(shipped_configs())}')


def _resolve_config_args(argv: Sequence[str]) -> list[str]:
  """argv with the value of a config-file `--config` resolved by `resolve_config`."""
  if 'config' not in flags.FLAGS or not isinstance(flags.FLAGS['config'].parser, ConfigFileFlagParser):
    return list(argv)
  out = list(argv)
  for i, arg in enumerate(out[1:], start=1):
    if arg == '--':
      break
    match = re.fullmatch(r'--?config(=(.*))?', arg)
    if match and match.group(1):
      out[i] = '--config=' + resolve_config(match.group(2))
    elif match and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
  return out


def _flag_error_line(error: flags.Error) -> str:
  """An absl flag error as one line: a required flag named as such, a config file's own error without the
  traceback config_flags appends."""
  text = str(error)
  missing = re.search(r'Flag (--\w+) must have a value other than None', text)
  if missing:
    return f'{missing.group(1)} is required'
  lines = [line for line in text.splitlines() if line.strip()]
  if len(lines) > 1 and lines[1].startswith('Traceback'):  # the config file raised while building the config
    return re.sub(r'^\w+(Error|Exception): ', '', lines[-1])
  return ' '.join(lines)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing with every mistake (unknown flag, bad override, missing flag) as one usage line."""
  try:
    argv = _resolve_config_args(argv)
    rest = flags.FLAGS(argv)
    for name in flags.FLAGS:  # config_flags defers a config file's load error to the first attribute read
      getattr(flags.FLAGS[name].value, 'keys', None)
    return rest
  except UsageError as error:
    fail(error, EXIT_USAGE)
  except (SyntaxError, ImportError, NameError) as error:  # a config file that does not run
    where = f'{error.filename}:{error.lineno}: ' if isinstance(error, SyntaxError) else ''
    fail(f'--config: {where}{type(error).__name__}: {error.msg if where else error}', EXIT_USAGE)
  except AttributeError as error:
    if "has no attribute 'get_config'" in str(error):  # a config file without get_config()
      fail('--config: the config file defines no get_config()', EXIT_USAGE)
    fail(f'unknown config key {one_line(error)}', EXIT_USAGE)
  except flags.Error as error:
    fail(_flag_error_line(error), EXIT_USAGE)
  except KeyError as error:  # a mistyped config key
    fail(f'unknown config key {one_line(error)}', EXIT_USAGE)
  except (TypeError, ValueError, OSError) as error:  # a bad type
    fail(error, EXIT_USAGE)


def config_tree(config: ml_collections.ConfigDict, indent: int = 2) -> list[str]:
  """`config` as indented `key: value` lines (values as Python literals), leaves before nested dicts."""
  leaves = [(k, v) for k, v in config.items() if not isinstance(v, ml_collections.ConfigDict)]
  nested = [(k, v) for k, v in config.items() if isinstance(v, ml_collections.ConfigDict)]
  lines = [f'{" " * indent}{key}: {value!r}' for key, value in leaves]
  for key, value in nested:
    lines += [f'{" " * indent}{key}:'] + config_tree(value, indent + 2)
  return lines


def _flag_lines() -> list[str]:
  """`--name: help (default: ...)` for the flags the command defined (not absl's own or config overrides)."""
  lines = []
  for name in sorted(flags.FLAGS):
    flag = flags.FLAGS[name]
    module = flags.FLAGS.find_module_defining_flag(name, '')
    if name != flag.name or '.' in name or module.startswith('absl'):
      continue
    default = '' if flag.default is None or isinstance(flag.default, ml_collections.ConfigDict) else \
        f' (default: {flag.default_as_str.strip(chr(39))})'
    required = ' (required)' if any('other than None' in v.message for v in flag.validators) else ''
    prefix = '--[no]' if flag.boolean else '--'
    lines.append(f'  {prefix}{name}: {" ".join(flag.help.split())}{default}{required}')
  return lines


def _print_help(doc: str, help_config: Callable[[list[str]], tuple[str, Any] | None] | None,
                argv: list[str]) -> NoReturn:
  """Prints the command's docstring, flags and config tree on stdout and exits 0."""
  lines = [doc.strip(), '', 'flags:'] + _flag_lines()
  lines += ['  (absl logging flags: --verbosity=0 shows INFO logs; --helpfull lists every flag)']
  shown = help_config(argv) if help_config else None
  if shown:
    title, config = shown
    lines += ['', title] + config_tree(config)
  if '--helpfull' in argv:
    lines += ['', flags.FLAGS.get_help()]
  try:
    print('\n'.join(lines), flush=True)
  except BrokenPipeError:  # `--help | head`
    sys.stdout = None
  sys.exit(EXIT_OK)


def config_for_help(argv: Sequence[str]) -> tuple[str, ml_collections.ConfigDict]:
  """The config a help text shows: the `--config` named in argv, or the shipped default.

  Raises:
    UsageError: the named config cannot be found or loaded (one line).
  """
  value = None
  for i, arg in enumerate(argv):
    match = re.fullmatch(r'--?config(=(.*))?', arg)
    if match:
      value = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  if value is None:
    return ('config keys, with the values of configs/default.py (--config <name> --help shows that config\'s);\n'
            'override any with --config.<key>=<value>:',
            ConfigFileFlagParser('config').parse(str(CONFIG_DIR / 'default.py')))
  try:
    config = ConfigFileFlagParser('config').parse(resolve_config(value))
    config.keys()
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as error:
    raise UsageError(f'--config {value}: {one_line(error).splitlines()[-1]}') from error
  return f'config keys of {value}, with their values; override any with --config.<key>=<value>:', config


def run(main: Callable[[list[str]], int | None], *,
        errors: tuple[type[BaseException], ...] | Callable[[], tuple[type[BaseException], ...]] = (ValueError,),
        define: Callable[[], None] | None = None, doc: str | None = None,
        help_config: Callable[[list[str]], tuple[str, Any] | None] | None = None) -> NoReturn:
  """Runs an absl `main` under the exit-status contract above.

  Args:
    main: the command, called with the positional arguments left after flag parsing (argv[0] first); it
      returns an exit status or None (0). Extra positional arguments are a usage error before `main` runs.
    errors: exception types that are the user's data, checkpoint or value errors, or a function returning
      them (so a command imports its heavy modules only once past `--help`): printed as one line, exit
      status 1. `UsageError` always exits 2 and `Resumable` 75, with their message on one line
      (`Resumable`'s on stdout, since it is not an error).
    define: defines the command's flags; a config-override mistake it meets (inline configs parse their
      overrides when defined) is a usage error.
    doc: the help text's head (the command module's docstring).
    help_config: given argv, the (title, ConfigDict) whose keys `--help` shows, or None.

  Raises:
    SystemExit: always, with the status.
  """
  argv = list(sys.argv)
  cut = argv.index('--') if '--' in argv else len(argv)
  if any(arg in HELP_ARGS or arg.startswith('--help=') for arg in argv[1:cut]):
    sys.argv = [arg for arg in argv if not re.match(r'--?config\.', arg)]  # define without the overrides
    try:
      if define:
        define()
      app.define_help_flags()
      _print_help(doc or '', help_config, argv)
    except UsageError as error:
      fail(error, EXIT_USAGE)
  try:
    if define:
      define()
  except flags.Error as error:
    fail(error, EXIT_USAGE)
  except (AttributeError, KeyError) as error:  # an inline config's mistyped key
    fail(f'unknown config key {one_line(error)}', EXIT_USAGE)
  except (TypeError, ValueError) as error:
    fail(error, EXIT_USAGE)

  def wrapped(argv: list[str]) -> int | None:
    if len(argv) > 1:
      fail(f'unexpected arguments: {" ".join(argv[1:])}', EXIT_USAGE)
    handled = errors() if callable(errors) else errors
    drop_closed_loop_reports()
    try:
      return main(argv)
    except UsageError as error:
      fail(error, EXIT_USAGE)
    except Resumable as error:
      print(one_line(error), flush=True)
      sys.exit(EXIT_RESUMABLE)
    except handled as error:
      fail(error, EXIT_ERROR)
    except BrokenPipeError:  # the reader of stdout left (`| head`): nothing more to say
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      sys.exit(EXIT_OK)

  try:
    app.run(wrapped, flags_parser=_parse_flags)
  except flags.IllegalFlagValueError as error:  # a required flag left unset (checked after parsing)
    fail(_flag_error_line(error), EXIT_USAGE)
  raise AssertionError('app.run returned')  # pragma: no cover

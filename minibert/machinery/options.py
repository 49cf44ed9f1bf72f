"""Option errors as one line: what jsonargparse, argparse and Lightning's Trainer say, without usage text or traceback.

The parsers are told not to exit on an error (``exit_on_error=False``, or :class:`OneLineParser`
for the inspection commands); their message is shortened here to the option and the problem,
and ``--help`` stays the place for the full usage.
"""

from __future__ import annotations

import argparse
import inspect
import re
from typing import NoReturn

from lightning.pytorch import Trainer

from minibert.errors import MinibertError

SUBCOMMANDS = ("fit", "validate", "test", "predict")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":')
_EXPECTED = re.compile(r"Expected a (.+)\. Got value: (.*)")


def help_hint(command: str | None) -> str:
    """The hint line under an option error."""
    return f"see: minibert {command} --help" if command else "see: minibert --help"


def parse_error(message: str, args: list[str] | None) -> MinibertError:
    """jsonargparse's error (a type, an unknown key, a missing value) as one line naming the option."""
    command = next((arg for arg in args or [] if arg in SUBCOMMANDS), None)
    return MinibertError(_one_line(message), hint=help_hint(command))


def _one_line(message: str) -> str:
    """A type error spans many lines (one per type of a Union): keep the option, the value and what was expected."""
    lines = [line.strip().removeprefix("- ") for line in message.strip().splitlines() if line.strip()]
    key = _PARSER_KEY.fullmatch(lines[0]) if lines else None
    if key is None:  # an unknown option or a missing value: one line already
        return " ".join(lines)
    details = lines[1:]
    for line in details:
        if expected := _EXPECTED.fullmatch(line):
            return f"{key.group(1)}: expected {_plain(expected.group(1))}, got {expected.group(2)!r}"
    for line in details:
        if line.endswith("is not accepted"):  # an unknown init_args key of a class (a logger, a callback)
            return f"{key.group(1)}: {line[0].lower()}{line[1:]}"
    value = next((line.split(":", 1)[1].strip() for line in details if line.startswith("Given value:")), None)
    return (
        f"{key.group(1)}: {value!r} is not one of the accepted values"
        if value
        else f"{key.group(1)}: not a valid value"
    )


def _plain(type_name: str) -> str:
    """``<class 'int'>`` as ``int``, ``typing.Literal['relu', 'gelu']`` as ``one of 'relu', 'gelu'``."""
    type_name = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", type_name)
    return re.sub(r"typing\.Literal\[(.*)\]", r"one of \1", type_name)


def trainer_error(error: Exception, command: str | None) -> MinibertError:
    """One of Lightning's checks of the trainer's options (``MisconfigurationException``, ``ValueError``) as one line."""
    message = " ".join(str(error).split())
    names = inspect.signature(Trainer.__init__).parameters
    quoted = re.findall(r"`(\w+)", message)  # Lightning quotes the option's name
    option = next((name for name in quoted if name in names), None)
    return MinibertError(
        f"trainer.{option}: {message}" if option else f"trainer: {message}", hint=help_hint(command)
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a :class:`MinibertError` (one line and a hint) rather than the usage and exit."""

    def error(self, message: str) -> NoReturn:
        # A subcommand's prog is "minibert export":
        command = self.prog.split()[-1] if " " in self.prog else None
        raise MinibertError(message, hint=help_hint(command))

"""Split a shell command line into the programs it runs (first word of every simple command)."""

from __future__ import annotations

import os
import re

_SEPARATORS = re.compile(r"\|\||&&|[;|&\n]|\$\(|`|\)|<\(|>\(")
_PREFIX_WORDS = {"sudo", "env", "nohup", "exec", "time", "command", "builtin", "nice", "stdbuf", "timeout",
                 "xargs", "doas", "then", "do", "else", "!", "{", "(", "if", "while", "until"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
MAX_COMMANDS = 64


def shell_commands(command_line: str) -> tuple[str, ...]:
    """Programs a shell line runs, e.g. 'cd x && curl y | sh' -> ('cd', 'curl', 'sh').

    Unknown constructs yield '?', which no allow rule can match except '*'.
    """
    found: list[str] = []
    for segment in _SEPARATORS.split(command_line):
        words = segment.strip().split()
        while words and (words[0] in _PREFIX_WORDS or _ASSIGNMENT.match(words[0]) or words[0].startswith("-")):
            words = words[1:]
        if not words or words[0].startswith("#"):
            continue
        word = words[0].strip("'\"")
        if word in ("fi", "done", "}", "esac"):
            continue
        program = os.path.basename(word) if "/" in word else word
        if not re.fullmatch(r"[\w.+-]+", program or ""):
            program = "?"
        if program not in found:
            found.append(program)
        if len(found) >= MAX_COMMANDS:
            found.append("?")
            break
    return tuple(found)

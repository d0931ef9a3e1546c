"""params.yaml as the defaults of a subcommand: its section, read strictly, checked against the flags' own types."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

from ipt.cli.commands import COMMANDS, UserError, command_module

T = TypeVar("T")

# Top-level params.yaml keys that a section inherits when it does not set them itself.
PARAMS_GLOBALS = ("seed", "patch_size")
# Keys that left a section: (section, key) -> where they are now (named in the error for an old params file).
PARAMS_MOVED = {("refine", "tasks"): "the top-level key 'refine_tasks' (outside the section)"}


def params_source(args: argparse.Namespace) -> str:
    """The params file a command reads: ``--params``, else ``$IPT_PARAMS``, else ``params.yaml`` ('none': no file)."""
    return getattr(args, "params", None) or os.environ.get("IPT_PARAMS") or "params.yaml"


def section_keys(command: str) -> tuple[str, ...] | None:
    """The keys ``command``'s params.yaml section may hold (None: the command reads no section)."""
    if command not in COMMANDS:
        return None
    return getattr(command_module(command), "PARAMS_KEYS", {}).get(command)


def params_section(path: Path, command: str) -> dict:
    """The strict ``command`` section of a params file: unknown keys are an error naming the file."""
    import yaml

    keys = section_keys(command)
    if keys is None:
        raise UserError(f"'{command}' reads no params section")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read params ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: params must be a mapping of sections")
    section = data.get(command) or {}
    if not isinstance(section, dict):
        raise UserError(f"{path}: section '{command}' must be a mapping")
    unknown = sorted(set(section) - set(keys))
    moved = [f"'{command}.{k}' is now {PARAMS_MOVED[command, k]}" for k in unknown if (command, k) in PARAMS_MOVED]
    if moved:
        raise UserError(f"{path}: {'; '.join(moved)}")
    if unknown:
        raise UserError(f"{path}: unknown key(s) {unknown} in '{command}'; known: {list(keys)}")
    section = dict(section)
    if command == "pretrain" and "tasks" not in section and isinstance((data.get("corrupt") or {}).get("tasks"), dict):
        section["tasks"] = list(data["corrupt"]["tasks"])  # the task list lives once, in corrupt.tasks
    for key in PARAMS_GLOBALS:
        if key in keys and key not in section and data.get(key) is not None:
            section[key] = data[key]
    # lists go through the flags' own comma-separated parsers (argparse applies `type` to string defaults)
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in section.items() if v is not None}


def check_param_values(path: Path, command: str, section: dict, sub: argparse.ArgumentParser) -> None:
    """Each value goes through its flag's type and choices here, so a bad one is reported against the params file
    and key (argparse would blame a flag the user never typed)."""
    actions = {a.dest: a for a in sub._actions}
    for key, value in section.items():
        action = actions.get(key)
        if action is None:
            continue
        if isinstance(value, bool) and action.type not in (None, bool) and action.nargs != 0:
            raise UserError(f"{path}: {command}.{key}: expected a value for --{key.replace('_', '-')}, not {value}")
        try:
            if action.type is not None and isinstance(value, (str, int, float)):
                value = action.type(str(value))  # 1.5 for an integer flag is an error, as on the command line
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise UserError(f"{path}: {command}.{key}: invalid value {value!r} ({e})") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise UserError(f"{path}: {command}.{key}: {value!r} is not one of {choices}")


def defaults_for(args: argparse.Namespace, sub: argparse.ArgumentParser | None) -> dict:
    """The checked params.yaml section of ``args.command`` (empty when it reads none, or no file is there)."""
    source = params_source(args)
    if sub is None or section_keys(args.command) is None or source == "none":
        return {}
    path = Path(source)
    explicit = source != "params.yaml" or getattr(args, "params", None) is not None
    if not (explicit or path.is_file()):
        return {}
    section = params_section(path, args.command)
    check_param_values(path, args.command, section, sub)
    return section


def config_from(cls: type[T], args: argparse.Namespace, **fixed: Any) -> T:
    """``cls`` (a frozen config dataclass) from the parsed flags, which already hold the params section: the fields
    a flag or the section set, the dataclass's own defaults for the rest (their one home), ``fixed`` on top. The
    dataclass checks the values once, in its ``__post_init__``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return cls(**(values | fixed))

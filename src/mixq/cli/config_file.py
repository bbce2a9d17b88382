"""``--config FILE``: any command's options from a YAML or JSON file, so a run can be written down and repeated.

The file is a mapping of option names to values (``mode: dynamic``, ``hf: ./my-bert``, ``exclude: [classifier]``;
``true`` for a flag), or the JSON sidecar a run wrote (its ``command`` is replayed). The file's options come first,
so options on the command line win: ``mixq quantize --config run.mixq.json --output other.onnx``.
"""

from __future__ import annotations

import json
from typing import Any

from mixq.cli.errors import CliError, existing_file, first_line


def _load(text: str) -> Any:
    path = existing_file(text, "--config")
    raw = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            return json.loads(raw)
        import yaml

        return yaml.safe_load(raw)
    except Exception as err:  # noqa: BLE001 - any parse error is the user's file
        raise CliError(f"--config {text!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                       f"({first_line(err)})", "write one option per line, e.g. `mode: dynamic`") from err


def _tokens(options: dict[str, Any], source: str) -> list[str]:
    tokens: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            tokens.append(flag)
        elif isinstance(value, (list, tuple)):
            tokens += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, (str, int, float)):
            tokens += [flag, str(value)]
        else:
            raise CliError(f"--config {source!r}: option {key!r} holds a {type(value).__name__}",
                           "give each option a string, number, list or true/false")
    return tokens


def expand_config(argv: list[str]) -> list[str]:
    """``argv`` with ``--config FILE`` replaced by the file's options, placed right after the command name."""
    flags = [i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]
    if not flags:
        return argv
    if len(flags) > 1:
        raise CliError("--config is given more than once", "merge the files into one")
    i = flags[0]
    if argv[i] == "--config":
        if i + 1 >= len(argv):
            raise CliError("--config needs a file", "pass --config FILE.yaml (or a run's .mixq.json sidecar)")
        source, rest = argv[i + 1], argv[:i] + argv[i + 2:]
    else:
        source, rest = argv[i].split("=", 1)[1], argv[:i] + argv[i + 1:]
    data = _load(source)
    if not isinstance(data, dict):
        raise CliError(f"--config {source!r} holds no mapping of options", "write one option per line")
    command = next((a for a in rest if not a.startswith("-")), None)
    if command is None:
        raise CliError("--config needs the command it configures", f"e.g. mixq quantize --config {source}")
    recorded = data.get("command")
    if isinstance(recorded, list) and recorded[:1] == ["mixq"]:  # a run's sidecar: replay its command line
        if len(recorded) < 2 or recorded[1] != command:
            raise CliError(f"--config {source!r} records a `mixq {' '.join(recorded[1:2])}` run, not `mixq "
                           f"{command}`", f"run mixq {' '.join(recorded[1:2])} --config {source}")
        tokens = [str(t) for t in recorded[2:]]  # already expanded when that run had a --config
    else:
        tokens = _tokens({k: v for k, v in data.items() if k != "command"}, source)
    at = rest.index(command) + 1
    return rest[:at] + tokens + rest[at:]


__all__ = ["expand_config"]

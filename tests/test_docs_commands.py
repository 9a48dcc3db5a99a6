"""The commands in the README and docs/ run against the real parsers: none can go stale unnoticed.

Every line of a fenced code block in README.md, docs/**/*.md and the other READMEs (below) whose
program is one we ship or drive — `speech-llama`, `python`/`python3` (a script or `-m` module),
`accelerate launch`, `torchrun`, `pytest`, `make` (also as `.venv/bin/…`, after `VAR=value`
prefixes, and in `a && b` / `a; b` chains) — is checked; lines ending in `\\` are joined and
`# comments` dropped:

- `speech-llama CMD …`: CMD is in `apps.cli.COMMANDS` and the words parse with the real parser
  (`apps.cli.build_parser(CMD)`): every flag exists (spelled out, not abbreviated), choices are
  valid, required options are there. A pass-through command (`train`) is checked like
  `trainers/run.py`: the config file and `--key value` overrides that are fields of
  `trainers.arguments.DATACLASSES` (our keys + `TrainingArguments`, through `HfArgumentParser`).
- `accelerate launch [flags] SCRIPT|-m MODULE …`: the flags against accelerate's own launch
  parser, then SCRIPT / MODULE with its arguments as for `python` (`torchrun` alike, with its parser).
- `python SCRIPT …` / `python -m MODULE …`: the script or module exists; `trainers/run.py` as
  above, `importance.cli` / `apps.cli` through their command tables, a script with a
  `build_parser()` (every bench/*.py must have one) through that parser.
- `pytest` / `python -m pytest`: `-m` names markers registered in pyproject.toml, `tests/…` targets
  exist; `make T`: T is a target of the Makefile.
- every word that names a file of the repository (`trainers/…`, `data/…`, `bench/…`, or any
  `a/b.ext` with a file extension) exists, except outputs and placeholders: paths under `runs/`,
  `/tmp/`, absolute ones, the value of `--out`/`--output_dir`/…, words with `…`/`<>`/`$`, and
  CAPS names (`DIR`, `CONFIG.yaml`, `ORG/NAME`). A placeholder value also passes any type or choice.

Each (file, line) is its own test, so a failure names the line and what is wrong with it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOC_GLOBS = ("README.md", "docs/**/*.md", "trainers/configs/README.md", "data/README.md", "spaces_demo/README.md",
             "evaluate_metrics/**/README.md")
PYTHON_LANGS = {"python", "py", "python3", "pycon"}
# Values of these flags are written by the command, not read.
OUTPUT_FLAGS = {"--out", "--output", "--output_dir", "--output-dir", "--out-dir", "--out_dir", "--logging_dir",
                "--artifacts", "--save-dir"}
OUTPUT_PREFIXES = ("runs/", "./runs/", "out/", "/", "~")
FILE_EXTENSIONS = {".py", ".md", ".yaml", ".yml", ".json", ".jsonl", ".txt", ".toml", ".cfg", ".safetensors", ".wav",
                   ".png", ".csv", ".sh"}
CONVENTIONAL_CAPS = {"README", "LICENSE", "LICENCE", "CHANGELOG", "CONTRIBUTING", "NOTICE", "COPYING", "MANIFEST"}
WRAPPERS = {"time", "env", "nohup", "exec"}
SEPARATORS = {"&&", "||", ";", "|", "&", ";;", "|&"}
REDIRECT = re.compile(r"^\d*(>>?|<)&?\d*$")
PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PROGRAMS = {"speech-llama", "python", "accelerate", "torchrun", "pytest", "make"}
ELISIONS = {"…", "..."}  # a word standing for the rest of a command


# --------------------------------------------------------------------------------------------
# Finding the commands
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocCommand:
    path: str  # relative to the repository
    line: int  # 1-based, the first line of a joined command
    text: str  # the joined line, comment dropped


def doc_files() -> list[Path]:
    found = {path for pattern in DOC_GLOBS for path in REPO.glob(pattern) if path.is_file()}
    return sorted(found, key=lambda path: path.relative_to(REPO).as_posix())


def strip_comment(text: str) -> str:
    """`text` without a shell comment: `#` at the start of a word, outside quotes."""
    quote = None
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1].isspace()):
            return text[:index].rstrip()
    return text.rstrip()


def fenced_commands(markdown: str) -> list[tuple[int, str, str]]:
    """(first line, fence language, joined line) for every logical line inside fenced code blocks."""
    found, fence, lang, pending, start = [], None, "", "", 0
    for number, raw in enumerate(markdown.splitlines(), 1):
        stripped = raw.strip()
        opener = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
        if fence is None:
            if opener:
                fence, lang = opener.group(1), opener.group(2).lower()
            continue
        if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            fence, pending = None, ""
            continue
        line = raw.strip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        found.append((start, lang, (pending + line).strip()))
        pending = ""
    return found


def is_python_code(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


def words(text: str) -> list[str]:
    """Shell words of one line (comment dropped; `$(…)` kept as one placeholder word)."""
    text = re.sub(r"\$\([^()]*\)", "$SUBSTITUTION", strip_comment(text))
    text = re.sub(r"\d*>&\d+", " ", text)  # 2>&1: no word of any command
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def segments(tokens: list[str]) -> list[list[str]]:
    """Words split at `&&`, `||`, `;`, `|`, redirections dropped."""
    parts, current, skip = [], [], False
    for token in tokens:
        if skip:
            skip = False
            continue
        if token in SEPARATORS:
            parts.append(current)
            current = []
        elif REDIRECT.match(token):
            skip = True  # the redirection's target
        else:
            current.append(token)
    parts.append(current)
    return [part for part in parts if part]


def program_of(segment: list[str]) -> tuple[str | None, list[str]]:
    """(normalised program, its arguments) after `VAR=value` prefixes and `time`/`env`; program None: not ours."""
    index = 0
    while index < len(segment) and (ENV_ASSIGNMENT.match(segment[index]) or segment[index] in WRAPPERS):
        index += 1
    if index == len(segment):
        return None, []
    name = segment[index].rsplit("/", 1)[-1] if "/bin/" in segment[index] or segment[index].startswith("$") else segment[index]
    if PYTHON.match(name):
        name = "python"
    return (name if name in PROGRAMS else None), segment[index + 1:]


def checked_segments(text: str) -> list[tuple[str, list[str]]]:
    try:
        tokens = words(text)
    except ValueError:  # unbalanced quotes: not a shell line
        return []
    return [(program, args) for program, args in map(program_of, segments(tokens)) if program]


def extract_commands(markdown: str, path: str = "<text>") -> list[DocCommand]:
    commands = []
    for line, lang, text in fenced_commands(markdown):
        text = strip_comment(re.sub(r"^\$\s+", "", text))
        if not text or (lang in PYTHON_LANGS and is_python_code(text)):
            continue
        if checked_segments(text):
            commands.append(DocCommand(path, line, text))
    return commands


def all_doc_commands() -> list[DocCommand]:
    return [command for path in doc_files()
            for command in extract_commands(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())]


# --------------------------------------------------------------------------------------------
# Parsing with the real parsers, without exiting
# --------------------------------------------------------------------------------------------


class ParseProblem(Exception):
    pass


def is_placeholder(word: str) -> bool:
    if any(mark in word for mark in ("…", "...", "<", ">", "$", "{", "*", "?")):
        return True
    for part in word.split("/"):
        stem = part.split(".", 1)[0]
        if re.fullmatch(r"[A-Z][A-Z0-9_-]*", stem) and stem not in CONVENTIONAL_CAPS:
            return True
    return False


def _raise(message: str):
    raise ParseProblem(message)


def _tolerant(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make `parser` (and its subparsers) raise instead of exiting, and let placeholders through types and choices."""
    parser.error = _raise
    parser.exit = lambda status=0, message=None: _raise(message or f"exit {status}")
    check_value = parser._check_value
    parser._check_value = lambda action, value: None if isinstance(value, str) and is_placeholder(value) else check_value(action, value)
    for action in parser._actions:
        if callable(action.type):
            action.type = (lambda convert: lambda value: value if is_placeholder(value) else convert(value))(action.type)
        if isinstance(action, argparse._SubParsersAction):
            for subparser in set(action.choices.values()):
                _tolerant(subparser)
    return parser


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and its subparsers, recursively."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in set(action.choices.values()):
                found += all_parsers(subparser)
    return found


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for each in all_parsers(parser) for option in each._option_string_actions}


def flags_in(args: list[str]) -> list[str]:
    """The option words of `args` (up to a `--`), `--key=value` as `--key`."""
    flags = []
    for word in args:
        if word == "--":
            break
        if re.match(r"^--?[A-Za-z]", word):
            flags.append(word.split("=", 1)[0])
    return flags


def parse(parser: argparse.ArgumentParser, args: list[str], where: str) -> tuple[argparse.Namespace | None, list[str]]:
    """(namespace or None, problems) of parsing `args` with `parser` made tolerant; flags must be spelled out.

    A word `…` (the rest elided) is dropped, and then a missing required argument is no problem."""
    elided = [word for word in args if word in ELISIONS]
    args = [word for word in args if word not in ELISIONS]
    parser = _tolerant(parser)
    known = option_strings(parser)
    problems = [f"{where}: unknown option {flag} (an abbreviation or a flag that does not exist)"
                for flag in flags_in(args) if flag not in known]
    if any(word in ("-h", "--help") for word in args):
        return None, problems  # the flags are checked; parsing would only print the help
    if elided:
        for each in all_parsers(parser):
            for action in each._actions:
                if action.option_strings:
                    action.required = False
    try:
        return parser.parse_args(args), problems
    except ParseProblem as error:
        return None, problems + [f"{where}: {error}"]


# --------------------------------------------------------------------------------------------
# The programs
# --------------------------------------------------------------------------------------------


def training_parser() -> argparse.ArgumentParser:
    """`trainers/run.py`'s overrides: every field of our dataclasses and TrainingArguments, none required."""
    from transformers import HfArgumentParser

    from trainers.arguments import DATACLASSES

    parser = HfArgumentParser(DATACLASSES)
    for action in parser._actions:
        action.required = False
    return parser


def check_training(args: list[str], where: str) -> list[str]:
    """`[CONFIG.yaml] [--key value …]` of trainers/run.py and `speech-llama train`."""
    problems, args = [], [word for word in args if word not in ELISIONS]
    if args and not args[0].startswith("-"):
        config, args = args[0], args[1:]
        if not is_placeholder(config) and not (REPO / config).is_file():
            problems.append(f"{where}: config {config} does not exist")
    if args and not args[0].startswith("-"):
        problems.append(f"{where}: {args[0]!r} where a --key was expected (one config file, then --key value pairs)")
    return problems + parse(training_parser(), args, where)[1]


def check_command_table(table, prog: str, args: list[str], where: str) -> list[str]:
    """A `speech_llama.commands` dispatcher: `prog COMMAND …` with the command's own parser."""
    from speech_llama import commands

    if not args or args[0] in ("-h", "--help"):
        return [] if args else [f"{where}: no command"]
    name, rest = args[0], args[1:]
    if name not in table:
        return [f"{where}: unknown command {name!r} (commands: {', '.join(table)})"]
    try:
        module = importlib.import_module(table[name][0])
    except Exception as error:  # noqa: BLE001 - reported as the line's problem
        return [f"{where}: command {name}: its module {table[name][0]} does not import ({error})"]
    where = f"{where} {name}"
    if getattr(module, "PASS_THROUGH", False):
        if name == "train":
            return check_training(rest, where)
        if hasattr(module, "build_parser"):
            return parse(module.build_parser(), rest, where)[1]
        return [f"{where}: pass-through command without a parser this test knows; teach tests/test_docs_commands.py"]
    return parse(commands.build_parser(prog, table, name), [name, *rest], where)[1]


def check_speech_llama(args: list[str], where: str) -> list[str]:
    from apps.cli import COMMANDS, PROG

    return check_command_table(COMMANDS, PROG, args, where)


@lru_cache(maxsize=None)
def script_parser_factory(script: str):
    """A script's `build_parser` (bench/*.py have one), imported with its folder on sys.path; None if it has none."""
    path = REPO / script
    if "def build_parser" not in path.read_text(encoding="utf-8"):
        return None
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(f"_doc_script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module.build_parser


def check_script(script: str, args: list[str], where: str, doc_dir: Path) -> list[str]:
    if is_placeholder(script):
        return []
    path = REPO / script if (REPO / script).is_file() else doc_dir / script
    if not path.is_file():
        return [f"{where}: script {script} does not exist"]
    relative = path.resolve().relative_to(REPO).as_posix() if path.resolve().is_relative_to(REPO) else script
    where = f"{where} {relative}"
    if relative == "trainers/run.py":
        return check_training(args, where)
    try:
        factory = script_parser_factory(relative)
    except Exception as error:  # noqa: BLE001
        return [f"{where}: does not import ({error})"]
    if factory is None and relative.startswith("bench/"):
        return [f"{where}: a bench script without build_parser(); add one so its flags can be checked"]
    return parse(factory(), args, where)[1] if factory else []


def check_module(module: str, args: list[str], where: str) -> list[str]:
    where = f"{where} -m {module}"
    if module == "importance.cli":
        from importance.cli import ENGINE_COMMANDS

        return check_command_table(ENGINE_COMMANDS, "python -m importance.cli", args, where)
    if module == "apps.cli":
        return check_speech_llama(args, where)
    if module == "trainers.run":
        return check_training(args, where)
    if module == "pytest":
        return check_pytest(args, where)
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return [] if found else [f"{where}: no module named {module}"]


def check_python(args: list[str], where: str, doc_dir: Path) -> list[str]:
    index = 0
    while index < len(args):
        word = args[index]
        if word == "-m" and index + 1 < len(args):
            return check_module(args[index + 1], args[index + 2:], where)
        if word == "-c" or word in ("-h", "--help", "-V", "--version"):
            return []
        if word in ("-X", "-W"):
            index += 2
            continue
        if word.startswith("-"):
            index += 1
            continue
        return check_script(word, args[index + 1:], where, doc_dir)
    return []  # a bare interpreter


def split_launch(parser: argparse.ArgumentParser, args: list[str]) -> int:
    """Index of the script (or `-m` module) in a launcher's words: the first word that is not an option or its value."""
    actions = parser._option_string_actions
    index = 0
    while index < len(args):
        word = args[index]
        if not word.startswith("-") or word == "-":
            return index
        action = actions.get(word)
        takes_value = action is not None and "=" not in word and action.nargs != 0 and (
            action.nargs != "?" or (index + 1 < len(args) and not args[index + 1].startswith("-")))
        index += 2 if takes_value else 1
    return len(args)


def check_launcher(parser: argparse.ArgumentParser, args: list[str], where: str, doc_dir: Path) -> list[str]:
    """A launcher's own flags (`accelerate launch`, `torchrun`), then its script or `-m` module with the words after it."""
    script_index = split_launch(parser, args)
    if script_index == len(args):
        return parse(parser, args, where)[1] + [f"{where}: no script to launch"]
    script, script_args = args[script_index], args[script_index + 1:]
    namespace, problems = parse(parser, args[:script_index + 1], where)
    if namespace is None:
        return problems
    config = getattr(namespace, "config_file", None)
    if config and not is_placeholder(config) and not (REPO / config).is_file():
        problems.append(f"{where}: --config_file {config} does not exist")
    if namespace.module:
        return problems + check_module(script, script_args, where)
    return problems + check_script(script, script_args, where, doc_dir)


def check_accelerate(args: list[str], where: str, doc_dir: Path) -> list[str]:
    if not args or args[0] != "launch":
        return []  # `accelerate config`, `accelerate env`, …
    from accelerate.commands.launch import launch_command_parser

    return check_launcher(launch_command_parser(), args[1:], f"{where} launch", doc_dir)


def check_torchrun(args: list[str], where: str, doc_dir: Path) -> list[str]:
    from torch.distributed.run import get_args_parser

    return check_launcher(get_args_parser(), args, where, doc_dir)


@lru_cache(maxsize=None)
def pytest_markers() -> frozenset[str]:
    import tomllib

    markers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"].get("markers", [])
    return frozenset(marker.split(":", 1)[0].split("(", 1)[0].strip() for marker in markers) | {
        "skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings"}


def check_pytest(args: list[str], where: str) -> list[str]:
    problems = []
    for flag, value in zip(args, args[1:]):
        if flag == "-m":
            unknown = set(re.findall(r"[A-Za-z_]\w*", value)) - {"and", "or", "not"} - pytest_markers()
            problems += [f"{where}: pytest marker {name!r} is not registered in pyproject.toml" for name in sorted(unknown)]
    for word in args:
        target = word.split("::", 1)[0]
        if target.startswith("tests") and not is_placeholder(target) and not (REPO / target).exists():
            problems.append(f"{where}: pytest target {target} does not exist")
    return problems


@lru_cache(maxsize=None)
def make_targets() -> frozenset[str]:
    text = (REPO / "Makefile").read_text()
    return frozenset(name for names in re.findall(r"^([^\s:=#][^:=]*?)\s*::?(?!=)", text, flags=re.M) for name in names.split())


def check_make(args: list[str], where: str) -> list[str]:
    targets = [word for word in args if not word.startswith("-") and "=" not in word]
    return [f"{where}: no target {target!r} in the Makefile" for target in targets if target not in make_targets()]


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def top_level_folders() -> frozenset[str]:
    return frozenset(path.name for path in REPO.iterdir()
                     if path.is_dir() and not path.name.startswith(".") and path.name not in ("runs", "out"))


def looks_like_repo_path(word: str) -> bool:
    if "/" not in word or "://" in word or word.startswith(OUTPUT_PREFIXES):
        return False
    first = word.split("/", 1)[0]
    return first in top_level_folders() or Path(word).suffix.lower() in FILE_EXTENSIONS


def check_paths(args: list[str], where: str, doc_dir: Path) -> list[str]:
    problems, output = [], False
    for word in args:
        if output:
            output = False
            continue
        flag, _, value = word.partition("=")
        if flag in OUTPUT_FLAGS:
            output = not value
            continue
        candidate = value if word.startswith("-") and value else word
        candidate = candidate.split("::", 1)[0]
        if not looks_like_repo_path(candidate) or is_placeholder(candidate):
            continue
        if not ((REPO / candidate).exists() or (doc_dir / candidate).exists()):
            problems.append(f"{where}: {candidate} does not exist in the repository")
    return problems


# --------------------------------------------------------------------------------------------
# One line
# --------------------------------------------------------------------------------------------


def check_command(text: str, doc_dir: Path = REPO) -> list[str]:
    """Every problem of one command line (empty: it parses with the real parsers and its files exist)."""
    problems = []
    for program, args in checked_segments(text):
        where = program
        if program == "speech-llama":
            problems += check_speech_llama(args, where)
        elif program == "python":
            problems += check_python(args, where, doc_dir)
        elif program == "accelerate":
            problems += check_accelerate(args, where, doc_dir)
        elif program == "torchrun":
            problems += check_torchrun(args, where, doc_dir)
        elif program == "pytest":
            problems += check_pytest(args, where)
        elif program == "make":
            problems += check_make(args, where)
        problems += check_paths(args, where, doc_dir)
    return list(dict.fromkeys(problems))


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

DOC_COMMANDS = all_doc_commands()


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=[f"{c.path}:{c.line}" for c in DOC_COMMANDS])
def test_doc_command(command: DocCommand):
    problems = check_command(command.text, (REPO / command.path).parent)
    assert not problems, f"{command.path}:{command.line}: " + "; ".join(problems) + f"\n    {command.text}"


def test_readme_has_checked_commands():
    readme = [command for command in DOC_COMMANDS if command.path == "README.md"]
    programs = {program for command in readme for program, _ in checked_segments(command.text)}
    assert len(readme) >= 5, f"README.md: only {len(readme)} checked commands found: {readme}"
    assert "speech-llama" in programs, f"README.md: no speech-llama command checked ({sorted(programs)})"
    assert any(command.path.startswith("docs/") for command in DOC_COMMANDS), "no checked command in docs/"


def test_extraction_joins_continuations_and_skips_code_and_comments():
    markdown = "\n".join([
        "text `speech-llama build --nope` outside a block is not a command",
        "```bash",
        "# a comment line",
        "FOO=1 .venv/bin/speech-llama build --preset tiny-random \\",
        "    --out runs/tiny   # trailing comment",
        "cd runs && python3 -m importance.cli importance --help",
        "hf upload ORG/NAME runs/x",
        "```",
        "```python",
        "import subprocess",
        "python = 'speech-llama build'",
        "```",
        "```",
        "make test",
        "```",
    ])
    commands = extract_commands(markdown)
    assert [(c.line, c.text) for c in commands] == [
        (4, "FOO=1 .venv/bin/speech-llama build --preset tiny-random --out runs/tiny"),
        (6, "cd runs && python3 -m importance.cli importance --help"),
        (14, "make test"),
    ]
    assert checked_segments(commands[0].text) == [("speech-llama", ["build", "--preset", "tiny-random", "--out", "runs/tiny"])]


@pytest.mark.parametrize("line, expected", [
    ("speech-llama build --preset tiny-random --out runs/x --no-such-flag", "unknown option --no-such-flag"),
    ("speech-llama build --preset tiny-rand --out runs/x", "invalid choice"),
    ("speech-llama build --preset tiny-random", "required"),
    ("speech-llama buidl --out runs/x", "unknown command 'buidl'"),
    ("speech-llama importance --model runs/m --data data/no_such_file.jsonl --out runs/x.safetensors",
     "data/no_such_file.jsonl does not exist"),
    ("speech-llama importance --model runs/m --data data/demo_qa.jsonl --out runs/x.safetensors --max-sample 3",
     "unknown option --max-sample"),
    ("speech-llama train trainers/configs/tiny-random/lora.yaml --no_such_key 1", "unknown option --no_such_key"),
    ("speech-llama train trainers/configs/nowhere.yaml --max_steps 2", "config trainers/configs/nowhere.yaml does not exist"),
    ("python trainers/run.py trainers/configs/tiny-random/lora.yaml --max_step 2", "unknown option --max_step"),
    ("accelerate launch --bogus-flag trainers/run.py trainers/configs/tiny-random/lora.yaml", "unknown option --bogus-flag"),
    ("accelerate launch --num_processes 2 trainers/run.py trainers/configs/tiny-random/lora.yaml --num_processes 2",
     "trainers/run.py: unknown option --num_processes"),
    ("torchrun --nproc-per-node 2 trainers/run.py trainers/configs/tiny-random/lora.yaml --bogus 1", "unknown option --bogus"),
    ("accelerate launch --config_file trainers/configs/accelerate/nope.yaml trainers/run.py trainers/configs/tiny-random/lora.yaml",
     "nope.yaml does not exist"),
    ("accelerate launch -m importance.cli importance --model DIR --data DATA --out X.safetensors --bogus",
     "unknown option --bogus"),
    ("python bench/no_such_bench.py --smoke", "script bench/no_such_bench.py does not exist"),
    ("python bench/eval_batching.py --smok", "unknown option --smok"),
    ("python -m importance.nothing", "no module named importance.nothing"),
    (".venv/bin/python -m pytest -m 'not real_wieghts' -q", "marker 'real_wieghts'"),
    ("make tset", "no target 'tset'"),
    ("speech-llama importance --model DIR --data DATA", "the following arguments are required: --out"),
])
def test_checker_catches_bad_lines(line, expected):
    problems = check_command(line)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize("line", [
    "speech-llama build --preset tiny-random --out runs/tiny-random",
    "SPEECH_LLAMA_CACHE=/tmp/c .venv/bin/speech-llama importance --model DIR --data DATA --max-samples N --out X.safetensors",
    "speech-llama train trainers/configs/tiny-random/lora.yaml --max_steps 2 --output_dir runs/train/x",
    "accelerate launch --config_file trainers/configs/accelerate/fsdp_cpu.yaml trainers/run.py trainers/configs/tiny-random/layer_lr.yaml --max_steps 2",
    "python -m importance.cli compare A.safetensors B.safetensors --out runs/cmp",
    "python bench/fsdp_memory.py --table 8",
    ".venv/bin/python -m pytest -m 'not real_weights' -q tests/test_bench_smoke.py",
    "make test",
    "python -m importance.cli importance --help",
    "speech-llama build --preset tiny-random --out runs/x 2>&1 | tee runs/build.log > /dev/null",
    "speech-llama train --help",
    "accelerate launch --config_file trainers/configs/accelerate/fsdp_cpu.yaml -m importance.cli importance …",
    "accelerate launch --config_file trainers/configs/accelerate/cpu-ddp.yaml trainers/run.py CONFIG.yaml …",
])
def test_checker_passes_good_lines(line):
    assert check_command(line) == []

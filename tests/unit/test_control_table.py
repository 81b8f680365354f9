"""The control commands' table against the routes, the senders and the handlers.

Every command of :data:`control_api.COMMANDS` is forwarded by a route of the API table
or sent by a process of the tree, and has exactly one handler in the manager; every
route the manager answers names commands of the table, whose types are its request and
its answer; and no handler reads an argument its command's type does not declare.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from basic_inference_server import control_api as api
from basic_inference_server.errors import BadRequest
from basic_inference_server.gateway import management
from basic_inference_server.gateway.api_table import COMMAND, ROUTES
from basic_inference_server.manager import (
    commands,
    idle_commands,
    model_commands,
    remote_commands,
    reports,
    rollout_commands,
    traffic_commands,
)
from basic_inference_server.manager.control import handlers_of

PACKAGE = Path(api.__file__).parent
HANDLER_MODULES = (commands, reports, rollout_commands, traffic_commands, remote_commands,
                   idle_commands, model_commands)
HANDLER_CLASSES = (commands.EndpointCommands, reports.ReportCommands,
                   rollout_commands.RolloutCommands, traffic_commands.TrafficCommands,
                   remote_commands.RemoteCommands, idle_commands.IdleCommands,
                   model_commands.ModelCommands)
# The table's constants by name (UPDATE_WORKERS -> its Command).
CONSTANTS = {name: value for name, value in vars(api).items() if isinstance(value, api.Command)}


def routed() -> dict[str, set[str]]:
    """Command name -> the paths that forward it."""
    out: dict[str, set[str]] = {}
    for route in ROUTES:
        for name in route.commands.values():
            out.setdefault(name, set()).add(route.path)
    return out


def sent() -> set[str]:
    """The commands some module of the package builds a request of (``NAME.request(``)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "control_api.py":
            continue
        text = path.read_text(encoding="utf-8")
        found |= {cmd.name for const, cmd in CONSTANTS.items() if f"{const}.request(" in text}
    return found


def test_every_constant_is_in_the_table_once():
    assert sorted(c.name for c in CONSTANTS.values()) == sorted(api.COMMANDS)
    assert all(api.COMMANDS[c.name] is c for c in CONSTANTS.values())


def test_every_command_is_routed_or_sent_and_every_managed_route_uses_the_table():
    via_routes, via_senders = routed(), sent()
    unused = sorted(set(api.COMMANDS) - set(via_routes) - via_senders)
    assert not unused, f"commands nobody sends: {unused}"
    unknown = sorted(set(via_routes) - set(api.COMMANDS))
    assert not unknown, f"routes forwarding commands that are not in the table: {unknown}"
    for route in ROUTES:
        if route.view != COMMAND:
            assert not route.commands, route.path
            continue
        assert set(route.commands) == set(route.methods), route.path
        post = api.COMMANDS.get(route.commands.get("POST", ""))
        assert route.request == (post.schema() if post else None), route.path
        shown = post or api.COMMANDS[route.commands["GET"]]
        assert route.response == shown.reply, route.path


def test_every_command_has_one_handler_and_every_handler_a_command():
    marked = [getattr(fn, "_handles_command", None) for cls in HANDLER_CLASSES
              for _, fn in inspect.getmembers(cls, inspect.isfunction)]
    names = [n for n in marked if n is not None]
    assert sorted(names) == sorted(api.COMMANDS)


def test_handlers_of_refuses_two_handlers_of_one_command():
    class Twice:
        def __init__(self) -> None:
            self.core = None

        one = commands.EndpointCommands.ping
        two = commands.EndpointCommands.ping

    with pytest.raises(RuntimeError, match="two handlers"):
        handlers_of(Twice())


def _typed_params(func: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, type]:
    """The parameters annotated with a command's argument type (``api.ScaleArgs``)."""
    out = {}
    for arg in func.args.args:
        note = arg.annotation
        if isinstance(note, ast.Attribute) and isinstance(note.value, ast.Name) \
                and note.value.id == "api":
            typed = getattr(api, note.attr, None)
            if isinstance(typed, type) and hasattr(typed, "__annotations__"):
                out[arg.arg] = typed
    return out


def _reads(func: ast.AST, param: str) -> set[str]:
    """The keys read from ``param``: ``param["K"]`` and ``param.get("K", ...)``."""
    keys = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id == param and isinstance(node.slice, ast.Constant):
            keys.add(node.slice.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "get" and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == param and node.args \
                and isinstance(node.args[0], ast.Constant):
            keys.add(node.args[0].value)
    return keys


def test_no_handler_reads_an_argument_its_command_does_not_type():
    checked = 0
    for module in HANDLER_MODULES:
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for param, typed in _typed_params(func).items():
                declared = set(typed.__annotations__)
                untyped = _reads(func, param) - declared
                assert not untyped, f"{module.__name__}.{func.name} reads {untyped}"
                checked += 1
    assert checked >= len(api.COMMANDS)


def test_the_management_views_read_no_argument_themselves():
    tree = ast.parse(Path(management.__file__).read_text(encoding="utf-8"))
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef) and func.name in ("forward", "command_view", "view"):
            assert not _reads(func, "args"), func.name


@pytest.mark.parametrize(("command", "args", "problem"), [
    (api.UPDATE_WORKERS, {"SIGNATURE": "e", "NR_WORKERS": 0}, "NR_WORKERS must be >= 1"),
    (api.UPDATE_WORKERS, {"SIGNATURE": "e", "NR_WORKERS": 257}, "<= 256"),
    (api.UPDATE_WORKERS, {"SIGNATURE": "e", "NR_WORKERS": True}, "must be an integer"),
    (api.UPDATE_WORKERS, {"SIGNATURE": "e"}, "NR_WORKERS is required"),
    (api.UPDATE_WORKERS, [], "must be a JSON object"),
    (api.SHUTDOWN, {"SIGNATURE": "x"}, "SAFE_KILL_SERVER_CMD"),
    (api.SET_WEIGHTS, {"SIGNATURE": "e", "WEIGHTS": {"9x": 5}}, "WEIGHTS key must be"),
    (api.SET_WEIGHTS, {"SIGNATURE": "e", "WEIGHTS": {"a": 101}}, "WEIGHTS.a must be"),
    (api.ROLLOUT, {"SIGNATURE": "e", "CANARY": "b", "STEPS": []}, "STEPS must have 1 to 20"),
    (api.REPORT_HUNG, {"SIGNATURE": "e", "generation": 1, "pids": ["1"]}, "pids[0] must be"),
    (api.TRAFFIC_REPORT, {"pid": 1, "breakers": {"a": 1}}, "breakers.a must be an object"),
])
def test_bad_arguments_are_refused_naming_the_field(command, args, problem):
    with pytest.raises(BadRequest, match=problem.replace("[", r"\[").replace("]", r"\]")):
        command.check(args)


def test_good_arguments_pass_and_keys_beyond_the_type_are_the_handlers():
    assert api.UPDATE_WORKERS.check({"SIGNATURE": "e", "NR_WORKERS": 256})["NR_WORKERS"] == 256
    assert api.START_SERVER.check({"SIGNATURE": "e", "NR_WORKERS": 2})["NR_WORKERS"] == 2
    assert api.HISTORY.from_query({"samples": "12", "x": "y"}) == {"samples": 12, "x": "y"}
    assert api.HISTORY.from_query({"samples": "--5"}) == {"samples": "--5"}  # checked next


def test_the_bounds_are_the_schema_of_the_route():
    schema = api.UPDATE_WORKERS.schema()["properties"]["NR_WORKERS"]
    assert (schema["minimum"], schema["maximum"]) == (1, 256)

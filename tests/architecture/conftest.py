"""The `dpsr` subcommands' flags, read once per test session by tools/gen_cli_docs.py (one child
process for all subcommands), for the tests of docs/cli.md and of the commands in the docs."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def gen_cli_docs():
    """tools/gen_cli_docs.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "gen_cli_docs", os.path.join(ROOT, "tools", "gen_cli_docs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cli_flags(gen_cli_docs):  # pylint: disable=redefined-outer-name
    """gen_cli_docs.collect(): every subcommand's flags and absl's built-in flag names."""
    return gen_cli_docs.collect()

"""docs/cli.md is what tools/gen_cli_docs.py writes from the flags as they are defined now, and
the flags it reads are each subcommand's own (a subcommand's import does not leak into the next)."""


def _subcommand(cli_flags, name):
    return next(sub for sub in cli_flags["subcommands"] if sub["name"] == name)


def _flag(sub, name):
    return next(f for group in sub["modules"] for f in group["flags"] if f["name"] == name)


def test_docs_cli_md_is_up_to_date(gen_cli_docs, cli_flags):
    message = gen_cli_docs.stale_message(cli_flags)
    assert message is None, message


def test_every_dispatched_subcommand_is_listed(cli_flags):
    from dpsr_tf.cli import main  # pylint: disable=import-outside-toplevel
    assert [sub["name"] for sub in cli_flags["subcommands"]] == list(main.SUBCOMMANDS)
    assert all(sub["purpose"] for sub in cli_flags["subcommands"])


def test_each_subcommand_has_its_own_flags_and_its_shared_modules_only(cli_flags):
    export, serve = _subcommand(cli_flags, "export"), _subcommand(cli_flags, "serve")
    # Both define --version, differently: one process importing both would fail or mix them.
    assert _flag(export, "version")["type"] == "integer"
    assert _flag(serve, "version")["type"] == "bool"
    modules = {sub["name"]: [g["module"] for g in sub["modules"]]
               for sub in cli_flags["subcommands"]}
    assert modules["export"] == ["dpsr_tf.cli.export", "dpsr_tf.cli.feedback_flags",
                                 "dpsr_tf.cli.fusion_flags"]
    assert modules["tokenize"] == ["dpsr_tf.cli.tokenize", "dpsr_tf.cli.tokenizer_flags"]
    assert "dpsr_tf.cli.training_flags" in modules["crossval"]
    assert "dpsr_tf.cli.training_flags" not in modules["prepare"]
    names = {f["name"] for g in _subcommand(cli_flags, "tokenize")["modules"] for f in g["flags"]}
    assert "logtostderr" not in names and "helpfull" not in names
    assert {"helpfull", "flagfile", "logtostderr"} <= set(cli_flags["builtin"])

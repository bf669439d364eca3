"""Configuration (layer 3): YAML with line numbers, secrets, rule files and ``gradwatch.yaml``.

``yaml`` (load with line numbers, typed ``Section`` getters), ``secrets``
(``${ENV}``, ``*_file``, redaction), ``rulefiles`` (rule YAML -> ``Rule``),
``model`` (``gradwatch.yaml`` -> ``Config``, data only). The names the old
``gradwatch.config`` module had are re-exported here.
"""

import importlib

# Re-exported lazily (PEP 562): a one-shot command that only reads rule files (``gradwatch
# check``) does not pay for importing the daemon's config model and its channels at start-up.
_HOME = {
    **dict.fromkeys(
        (
            "DEFAULT_FORGET_AFTER",
            "DEFAULT_LISTEN",
            "DEFAULT_OUTBOX_MAX_AGE",
            "DEFAULT_RESCAN",
            "STOP_FILE_FIELDS",
            "Config",
            "check_stop_file_template",
            "listen_usage",
            "load_config",
            "parse_listen",
        ),
        "gradwatch.config.model",
    ),
    **dict.fromkeys(("ConfigError", "Problem", "Section", "load_yaml_file"), "gradwatch.config.yaml"),
}


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = sorted(_HOME)

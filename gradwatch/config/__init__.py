"""Configuration (layer 3): YAML with line numbers, secrets, rule files and ``gradwatch.yaml``.

``yaml`` (load with line numbers, typed ``Section`` getters), ``secrets``
(``${ENV}``, ``*_file``, redaction), ``rulefiles`` (rule YAML -> ``Rule``),
``model`` (``gradwatch.yaml`` -> ``Config``, data only). The names the old
``gradwatch.config`` module had are re-exported here.
"""

from gradwatch.config.model import (
    DEFAULT_FORGET_AFTER,
    DEFAULT_LISTEN,
    DEFAULT_OUTBOX_MAX_AGE,
    DEFAULT_RESCAN,
    STOP_FILE_FIELDS,
    Config,
    check_stop_file_template,
    listen_usage,
    load_config,
    parse_listen,
)
from gradwatch.config.yaml import ConfigError, Problem, Section, load_yaml_file

__all__ = [
    "DEFAULT_FORGET_AFTER",
    "DEFAULT_LISTEN",
    "DEFAULT_OUTBOX_MAX_AGE",
    "DEFAULT_RESCAN",
    "STOP_FILE_FIELDS",
    "Config",
    "ConfigError",
    "Problem",
    "Section",
    "check_stop_file_template",
    "listen_usage",
    "load_config",
    "load_yaml_file",
    "parse_listen",
]

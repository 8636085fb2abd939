"""Errors every layer raises: the message is meant for the user as is."""


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the setting, the value and what was expected."""

"""Errors that reach the user as one clear line and a non-zero exit."""


class PipelineError(Exception):
    """Bad input or state the user can fix; the message names the file, key or object."""


class ConfigError(PipelineError, ValueError):
    """A configuration file, preset or override is invalid; the message names the key."""


class DataError(PipelineError, ValueError):
    """Input data is missing, corrupt or inconsistent; the message names the file or key."""


EXIT_BAD_INPUT = 2  # exit status of `simclr` on a PipelineError: the flow never retries it

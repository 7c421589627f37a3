class VosError(ValueError):
    """A problem with the user's input (file, mask, config, checkpoint) whose message says how to fix it.

    Entry points print it without a traceback and exit with a non-zero code.
    """

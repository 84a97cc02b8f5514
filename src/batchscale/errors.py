"""The errors the command line reports as one line naming the offending key or file.

They live apart from the modules that raise them, so that the command line can catch them
without importing torch: `batchscale --help` and the table and report steps start in a
fraction of the time.
"""


class DataError(ValueError):
    """A prepared data file that cannot be used; the message names the file and the problem."""


class UnsafeFileError(ValueError):
    """A file that only an unrestricted (code-running) unpickler could read; names the file."""

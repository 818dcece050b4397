"""The one exception type that reaches the user as a single line.

Every check on user input (config values, architecture strings, DNAs, paths) raises `UserError` with a
message that names the problem and the fix. The CLI prints it as one line and exits 2; everything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input from the user: the message says what is wrong and how to fix it."""
